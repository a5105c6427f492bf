"""`run.py openapi [--json]`: the OpenAPI document of this backend as it runs with its app.

The built-in endpoints are described by hand in `docs/openapi.yaml` (the one source: the
installed package reads it as `service/openapi.yaml`, a link to it, so the document travels
with the code, in a wheel, the container image and the one-file executable). To it this adds one
operation per endpoint the app declares (`Registry.endpoints`, from `@endpoint` and
`@per_mode_endpoint`), described as the built-in signed endpoints are: `POST` with the
`Stripe-Signature` header, a body that is `SignedBody` plus the fields the endpoint declares
(each required, of its JSON type), the roles it needs in the description, the one JSON error
body (`Error`, with CORS) for 400, 401, 403, 413, 503 and any status the app's own `APIError`
chooses, and the CORS preflight. A path the document already describes (the example app's, by
hand) keeps its description; one the document marks `x-app-endpoint` (the example app's) is left
out when the running app does not declare it (with another app named, it answers 404).

The result is YAML (`--json`: JSON) on stdout, for `openapi-typescript`, say:

    python run.py openapi | (cd clients/typescript && npm run generate -- -)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from importlib import resources
from typing import Any

import yaml

from jobs.endpoints import EndpointSpec
from jobs.registry import Registry
from models.enums import MODES
from service.config import Config
from service.services import app_registry

#: The mark, on a path of the hand-written document, of an endpoint an app declares (the
#: example app's): it is in the output only when the running app declares that path.
APP_MARK = "x-app-endpoint"
#: JSON Schema types of the field types `@endpoint(fields=...)` takes.
JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
#: The error statuses every signed endpoint may answer, as the built-ins list them.
ERRORS = ("400", "401", "403", "413", "503")
#: A built-in signed endpoint whose preflight every app endpoint shares.
PREFLIGHT_OF = "/api/installation"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("openapi", help="print the OpenAPI document: the built-in endpoints and "
                       "the app's (YAML; --json for JSON)")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=run_openapi)


def builtin_document() -> dict[str, Any]:
    """The hand-written document of the built-in endpoints, as installed with the code."""
    text = resources.files("service").joinpath("openapi.yaml").read_text(encoding="utf-8")
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError("service/openapi.yaml is not an OpenAPI document")
    return loaded


def document(registry: Registry, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` (default: `builtin_document()`) with the registry's endpoints (module doc)."""
    doc = copy.deepcopy(builtin_document() if base is None else base)
    paths: dict[str, Any] = doc.setdefault("paths", {})
    for path in [p for p, item in paths.items() if APP_MARK in item]:
        if path not in registry.endpoints:
            del paths[path]
    preflight = paths.get(PREFLIGHT_OF, {}).get("options")
    taken = {op.get("operationId") for item in paths.values() for op in item.values()
             if isinstance(op, dict)}
    for path, spec in sorted(registry.endpoints.items()):
        if path in paths:
            continue  # described by hand
        item: dict[str, Any] = {"post": operation(spec, _operation_id(spec, taken))}
        if preflight is not None:
            item["options"] = copy.deepcopy(preflight)
        paths[path] = item
    return doc


def _operation_id(spec: EndpointSpec, taken: set[Any]) -> str:
    words = [w for part in spec.path.split("/")[2:] for w in part.replace("-", "_").split("_")]
    base = "app" + "".join(w[:1].upper() + w[1:] for w in words if w)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}{n}", n + 1
    taken.add(name)
    return name


def _error(description: str = "An error, readable by the extension (CORS)") -> dict[str, Any]:
    """An error answer as `components/responses/ApiError` has it, with its own description."""
    return {"description": description,
            "headers": {"Access-Control-Allow-Origin": {"$ref": "#/components/headers/CORS"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def operation(spec: EndpointSpec, operation_id: str) -> dict[str, Any]:
    """The `post` operation of one declared endpoint."""
    func = spec.func
    source = f"{func.__module__}.{getattr(func, '__qualname__', func.__name__)}"
    text = (spec.description or "").strip()
    summary = text.splitlines()[0] if text else f"{spec.path} ({source})"
    lines = [text] if text else []
    if spec.per_mode:
        lines.append(f"Declared by the app (`{source}`, `@per_mode_endpoint`): the account's "
                     "value in each mode it has installed, null in the others.")
        body: dict[str, Any] = {"$ref": "#/components/requestBodies/Signed"}
        answer: dict[str, Any] = {
            "type": "object", "required": ["account_id", *map(str, MODES)],
            "properties": {"account_id": {"type": "string"},
                           **{str(mode): {"nullable": True} for mode in MODES}}}
    else:
        lines.append(f"Declared by the app (`{source}`, `@endpoint`): the function's return "
                     "value, as JSON.")
        own: dict[str, Any] = {"type": "object", "properties": {
            name: {"type": JSON_TYPES[kind]} for name, kind in spec.fields.items()}}
        if spec.fields:
            own["required"] = list(spec.fields)
            lines.append("The body's fields " + ", ".join(f"`{n}`" for n in spec.fields)
                         + " are required, of their type (else 400 `bad_request`), and covered"
                         " by the signature (else 401).")
        body = {"required": True, "content": {"application/json": {"schema": {
            "allOf": [{"$ref": "#/components/schemas/SignedBody"}, own]}}}}
        answer = {}
    if spec.roles:
        lines.append("Needs one of the roles " + ", ".join(f"`{r}`" for r in spec.roles)
                     + " in the signed `stripe_roles` (else 403 `role_required`).")
    if spec.single_use:
        lines.append("Each signature is accepted once (401 `signature_replayed` after that).")
    lines.append("403 `not_installed` when the account has installed the app in no mode. An "
                 "`APIError` the app raises answers its own status and code, in the same "
                 "error body.")
    responses: dict[str, Any] = {"200": {
        "description": "The endpoint's answer",
        "headers": {"Access-Control-Allow-Origin": {"$ref": "#/components/headers/CORS"}},
        "content": {"application/json": {"schema": answer}}}}
    responses.update({status: {"$ref": "#/components/responses/ApiError"} for status in ERRORS})
    responses["default"] = _error("An error of the app's own (`APIError`), readable by the "
                                  "extension (CORS)")
    return {"summary": summary, "description": "\n\n".join(lines), "operationId": operation_id,
            "parameters": [{"$ref": "#/components/parameters/StripeSignature"}],
            "requestBody": body, "responses": responses}


class _Dumper(yaml.SafeDumper):
    """YAML without anchors: every operation written out (shared objects are copied)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dumps(doc: dict[str, Any], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return str(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100))


def run_openapi(config: Config, args: argparse.Namespace) -> int:
    sys.stdout.write(dumps(document(app_registry(config)), args.json))
    return 0
