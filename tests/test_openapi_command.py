"""`run.py openapi` (issue 24): the built-in document plus one operation per endpoint the app
declares, valid OpenAPI 3.0 (schemathesis's validator), YAML by default and JSON with `--json`.

The app is a small package written into tmp_path (never the project's example app). The
document is also checked against the running backend: a request built from it is answered as
described (the app's endpoint served by `run.py serve` on loopback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jsonschema_rs
import pytest
import schemathesis
import yaml
from conftest import ROOT, SAMPLE_APP, base_env, running
from test_typescript_client import CLIENT
from test_typescript_client import npm as npm  # the fixture

from cli.openapi import APP_MARK, builtin_document, document, dumps
from jobs.registry import Registry
from models.installation import Change, InstallChange
from models.loader import load_modules

APP = "memo_app"  # the test app's package; its modules leave sys.modules after each test

MEMOS = '''
from typing import Any

from jobs.endpoints import per_mode_endpoint  # the older, per-mode form (not public)
from stripe_app_backend import EndpointContext, SignedRequest, endpoint


@endpoint("/api/memos/add", fields={"text": str, "pinned": bool, "weight": float, "rank": int},
          roles=["admin", "memo_writer"])
async def add_memo(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    """Add a memo to the account.

    The text is kept as given."""
    return {"text": req.body["text"], "mode": ctx.mode}


@endpoint("/api/memos/count")
async def count(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    return {"count": 0}


@per_mode_endpoint("/api/memos/latest")
def latest(account_id: str, mode: str) -> dict[str, Any] | None:
    return {"mode": mode}
'''


@pytest.fixture
def app_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    package = tmp_path / "apps" / APP
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "memos.py").write_text(textwrap.dedent(MEMOS))
    yield package
    for name in [n for n in sys.modules if n == APP or n.startswith(APP + ".")]:
        del sys.modules[name]


def _registry(*packages: str) -> Registry:
    return Registry.from_modules(load_modules(["models", "jobs", *packages]))


def _valid(doc: dict) -> None:
    """Valid OpenAPI 3.0 (raises otherwise), and every reference resolves."""
    schemathesis.openapi.from_dict(doc).validate()
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node = doc
        for key in ref.split("/"):
            assert key in node, f"unresolved reference #/{ref}"
            node = node[key]


def test_an_apps_endpoints_get_their_operations(app_dir):
    doc = document(_registry(str(app_dir)))
    _valid(doc)
    builtin = builtin_document()
    # every built-in path is there, as written, but the example app's (not running here)
    marked = {p for p, item in builtin["paths"].items() if APP_MARK in item}
    assert marked == {"/api/balance", "/api/customers/summary"}
    for path, item in builtin["paths"].items():
        assert (path in doc["paths"]) is (path not in marked)
        if path not in marked:
            assert doc["paths"][path] == item

    add = doc["paths"]["/api/memos/add"]
    op = add["post"]
    assert op["summary"] == "Add a memo to the account."
    assert "The text is kept as given." in op["description"]
    assert "`admin`, `memo_writer`" in op["description"] and "role_required" in op["description"]
    assert op["parameters"] == [{"$ref": "#/components/parameters/StripeSignature"}]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["allOf"][0] == {"$ref": "#/components/schemas/SignedBody"}
    assert body["allOf"][1] == {
        "type": "object", "required": ["text", "pinned", "weight", "rank"],
        "properties": {"text": {"type": "string"}, "pinned": {"type": "boolean"},
                       "weight": {"type": "number"}, "rank": {"type": "integer"}}}
    assert op["requestBody"]["required"] is True
    # the errors as the built-in signed endpoints list them, 403 included, with CORS
    errors = {s: r for s, r in op["responses"].items() if s != "200"}
    assert {"400", "401", "403", "413", "503", "default"} == set(errors)
    assert all(r == {"$ref": "#/components/responses/ApiError"}
               for s, r in errors.items() if s != "default")
    assert op["responses"]["200"]["headers"] == {
        "Access-Control-Allow-Origin": {"$ref": "#/components/headers/CORS"}}
    # the preflight, as the built-ins'
    assert add["options"] == builtin["paths"]["/api/installation"]["options"]
    operation_ids = [o["operationId"] for item in doc["paths"].values()
                     for o in item.values() if isinstance(o, dict) and "operationId" in o]
    assert len(operation_ids) == len(set(operation_ids))
    assert op["operationId"] == "appMemosAdd"

    # no fields: the signed body alone; no description: named after its function
    count = doc["paths"]["/api/memos/count"]["post"]
    assert count["requestBody"]["content"]["application/json"]["schema"]["allOf"][1] == {
        "type": "object", "properties": {}}
    assert count["summary"] == f"/api/memos/count ({APP}.memos.count)"
    assert "role" not in count["description"]

    # a per-mode read: the account's value per mode
    latest = doc["paths"]["/api/memos/latest"]["post"]
    assert latest["requestBody"] == {"$ref": "#/components/requestBodies/Signed"}
    answer = latest["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["required"] == ["account_id", "live", "test", "sandbox"]
    assert set(answer["properties"]) == {"account_id", "live", "test", "sandbox"}


def test_the_example_apps_endpoints_keep_their_written_description():
    """The sample app declares the example's two paths: the hand-written operations stay, once."""
    doc = document(_registry(SAMPLE_APP))
    _valid(doc)
    builtin = builtin_document()
    assert doc["paths"]["/api/balance"] == builtin["paths"]["/api/balance"]
    assert doc["paths"]["/api/customers/summary"] == builtin["paths"]["/api/customers/summary"]
    assert set(doc["paths"]) == set(builtin["paths"])


def test_the_command_prints_yaml_and_json(tmp_path, app_dir):
    env = {**os.environ, **base_env(tmp_path, APP_PACKAGES=str(app_dir))}
    out = {}
    for flag in ([], ["--json"]):
        done = subprocess.run([sys.executable, "run.py", "openapi", *flag], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out[bool(flag)] = done.stdout
    as_yaml, as_json = yaml.safe_load(out[False]), json.loads(out[True])
    assert as_yaml == as_json
    assert "/api/memos/add" in as_json["paths"] and "/api/balance" not in as_json["paths"]
    assert "&id" not in out[False] and "*id" not in out[False]  # no YAML aliases
    assert dumps(as_json) == out[False]
    _valid(as_json)


def test_the_document_is_installed_with_the_code():
    """`service/openapi.yaml` is the document the docs link (docs/openapi.yaml), not a copy."""
    assert os.path.realpath(os.path.join(ROOT, "service", "openapi.yaml")) == os.path.join(
        ROOT, "docs", "openapi.yaml")
    with open(os.path.join(ROOT, "docs", "openapi.yaml")) as f:
        assert builtin_document() == yaml.safe_load(f)


@pytest.mark.gen_test(timeout=60)
async def test_the_described_request_is_answered_as_described(tmp_path, app_dir):
    """A body the document describes for the app's endpoint, signed, to the running backend:
    200 with a role the description names, else 403 `role_required`, in the described error
    body, with CORS."""
    doc = document(_registry(str(app_dir)))
    op = doc["paths"]["/api/memos/add"]["post"]
    own = op["requestBody"]["content"]["application/json"]["schema"]["allOf"][1]
    sample = {"string": "hello", "boolean": True, "number": 1.5, "integer": 3}
    fields = {name: sample[prop["type"]] for name, prop in own["properties"].items()}
    error = jsonschema_rs.validator_for(doc["components"]["schemas"]["Error"])
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        await app.backend.installations.apply(
            InstallChange("acct_1", "live", Change.INSTALLED, 100, "evt_1"))
        for roles, status in ((["memo_writer"], 200), (["viewer"], 403)):
            body = {"user_id": "usr_1", "account_id": "acct_1", "stripe_roles": roles, **fields}
            resp = await app.signed("/api/memos/add", body)
            assert resp.status_code == status, resp.text
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            if status == 200:
                assert resp.json() == {"text": "hello", "mode": "live"}
            else:
                error.validate(resp.json())
                assert resp.json()["error"]["code"] == "role_required"
        preflight = await app.client.options("/api/memos/add")
        described = doc["paths"]["/api/memos/add"]["options"]["responses"]
        assert str(preflight.status_code) in described


def test_the_typescript_client_types_the_apps_endpoints(tmp_path, app_dir, npm):  # noqa: F811
    """`run.py openapi | npm run generate -- -` (docs/apps.md): the client's generated types
    hold the app's endpoint with its fields (skipped without node_modules, as the client's
    own tests are)."""
    env = {**os.environ, **base_env(tmp_path, APP_PACKAGES=str(app_dir))}
    printed = subprocess.run([sys.executable, "run.py", "openapi"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
    out = tmp_path / "schema.ts"
    done = subprocess.run([npm, "run", "generate", "--", "--out", str(out), "-"], cwd=CLIENT,
                          input=printed, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    types = out.read_text()
    assert '"/api/memos/add": {' in types
    fields = types[types.index("appMemosAdd: {"):]
    fields = fields[fields.index('components["schemas"]["SignedBody"] & {'):]
    fields = fields[:fields.index("}")]
    assert [line.strip() for line in fields.splitlines()[1:] if line.strip()] == [
        "text: string;", "pinned: boolean;", "weight: number;", "rank: number;"]


@pytest.mark.gen_test(timeout=60)
async def test_a_per_mode_answer_has_every_mode_as_described(tmp_path, app_dir):
    """An account installed in its sandbox only: the per-mode endpoint answers the sandbox's
    value, null for live and test, and the answer matches the generated description."""
    doc = document(_registry(str(app_dir)))
    schema = doc["paths"]["/api/memos/latest"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        await app.backend.installations.apply(
            InstallChange("acct_1", "sandbox", Change.INSTALLED, 100, "evt_1"))
        resp = await app.signed("/api/memos/latest", {"user_id": "usr_1", "account_id": "acct_1"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"account_id": "acct_1", "live": None, "test": None,
                               "sandbox": {"mode": "sandbox"}}
        jsonschema_rs.validator_for(schema).validate(resp.json())
        # an @endpoint's ctx.mode is the installed one
        body = {"user_id": "usr_1", "account_id": "acct_1", "stripe_roles": ["admin"],
                "text": "x", "pinned": False, "weight": 1.0, "rank": 1}
        resp = await app.signed("/api/memos/add", body)
        assert resp.status_code == 200 and resp.json()["mode"] == "sandbox"
