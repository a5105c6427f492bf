"""Handlers for the signed endpoints declared outside `service/` (`jobs/endpoints.py`).

    declared_routes(registry, taken=API_ROUTES) -> [(path, handler class), ...]

Each declaration becomes a `SignedHandler` subclass named as the declaration says (so the
request metrics label it like a handler written here), with every check of `SignedHandler`
(signature, CORS and the preflight, 403 `not_installed`):

- `@endpoint(path, fields=, roles=)` -> an `EndpointHandler`: 403 `role_required` unless the
  signed `stripe_roles` hold one of `roles`; 400 `bad_request` for a declared field missing or
  of the wrong type (401 when the signature does not cover it); then the function's return
  value as JSON (`BadInput` -> 400 `bad_request`, `APIError` -> its own status and code).
  A function with no `await` in it (it needs no database, no network: it cannot suspend) is
  `lean`: `service/lean.py` serves it, as fast as the built-in `/api/installation`.
  `single_use=True` makes it a `single_use_signature` handler (each signature accepted once;
  it is then never lean: recording the signature is a database write).
- `@per_mode_endpoint(path)` -> a `PerModeHandler`: for each mode of `MODES` (live, test,
  sandbox), the declared read of the calling account in a database thread when the account is
  installed in that mode, else null.
"""

from __future__ import annotations

import dis
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from jobs.endpoints import EndpointContext, EndpointSpec, ReadFunc, installed_modes
from jobs.registry import Registry
from jobs.tasks import BadInput
from models.enums import MODES
from service.base import APIError
from service.signed import SignedHandler, SignedRequest

#: The opcodes of a suspension point (`await`, `async for`, `async with`).
_SUSPENDS = frozenset({"GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH",
                       "SEND", "YIELD_VALUE", "YIELD_FROM"})
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class PerModeHandler(SignedHandler):
    """`{"account_id", "live": read(account, "live") | None, "test": ..., "sandbox": ...}` (a
    key per mode of `MODES`), reading only the modes the account has installed."""

    read: ClassVar[ReadFunc]

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        answer: dict[str, Any] = {"account_id": req.account_id}
        for mode in MODES:
            if self.installations.is_active(req.account_id, mode):
                answer[mode] = await self.storage.run(type(self).read, req.account_id, mode)
            else:
                answer[mode] = None
        return answer


class EndpointHandler(SignedHandler):
    """An `@endpoint`: the role and field checks, then the function's value (module doc)."""

    spec: ClassVar[EndpointSpec]

    async def handle(self, req: SignedRequest) -> Any:
        spec = type(self).spec
        if spec.roles and not req.has_role(*spec.roles):
            raise APIError(403, "this endpoint needs one of these roles in the signed "
                           f"stripe_roles: {', '.join(spec.roles)}", code="role_required",
                           reason_for_log=f"{spec.path}: no role of {', '.join(spec.roles)}")
        for name, kind in spec.fields.items():
            check_field(req.body, name, kind)
            req.signed(name)  # 401 unless the signature covers it
        ctx = EndpointContext(req.account_id, req.user_id,
                              installed_modes(self.installations.is_active, req.account_id),
                              self.storage)
        try:
            return await spec.func(req, ctx)
        except BadInput as exc:
            raise APIError(400, str(exc), code="bad_request") from None


def check_field(body: dict[str, Any], name: str, kind: type) -> None:
    """400 `bad_request` unless `body[name]` is there and of `kind` (JSON's types: an integer
    is a number; true and false are no integers)."""
    if name not in body:
        raise APIError(400, f"body needs the field {name!r}", code="bad_request")
    value = body[name]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise APIError(400, f"field {name!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}",
                       code="bad_request")


def suspends(func: Callable[..., Any]) -> bool:
    """Whether the coroutine function `func` has a suspension point (an `await`, `async for`,
    `async with`) in its own code: one that has none answers without waiting on anything."""
    code = getattr(func, "__code__", None)
    if code is None:
        return True
    return any(ins.opname in _SUSPENDS for ins in dis.get_instructions(code))


def handler_for(spec: EndpointSpec) -> type[SignedHandler]:
    """The handler class of one declared endpoint."""
    func = spec.func
    if spec.per_mode:
        return type(spec.handler_name, (PerModeHandler,),
                    {"read": staticmethod(func), "__module__": func.__module__,
                     "__doc__": f"POST {spec.path}: {func.__name__} per installed mode."})
    return type(spec.handler_name, (EndpointHandler,),
                {"spec": spec, "single_use_signature": spec.single_use,
                 "lean": not spec.single_use and not suspends(func),
                 "__module__": func.__module__,
                 "__doc__": f"POST {spec.path}: {spec.description or func.__name__}"})


def declared_routes(registry: Registry, taken: Iterable[tuple[str, Any]] = ()
                    ) -> list[tuple[str, type[SignedHandler]]]:
    """The routes of the registry's endpoints, by path; one that a route of `taken` already
    answers is refused (it would never be reached)."""
    patterns = [re.compile(pattern) for pattern, *_ in taken]
    routes: list[tuple[str, type[SignedHandler]]] = []
    for path, spec in sorted(registry.endpoints.items()):
        if any(p.fullmatch(path) for p in patterns):
            raise ValueError(f"the endpoint {path} of {spec.func.__module__} is a built-in "
                             "endpoint's path")
        routes.append((path, handler_for(spec)))  # PATH allows no regex syntax
    return routes
