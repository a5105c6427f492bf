"""Handlers for the signed endpoints declared outside `service/` (`jobs/endpoints.py`).

    declared_routes(registry, taken=API_ROUTES) -> [(path, handler class), ...]

Each `@per_mode_endpoint(path)` becomes a `PerModeHandler` subclass named as the declaration
says (so the request metrics label it like a handler written here): every check of
`SignedHandler`, then, for each mode, the declared read of the calling account in a database
thread when the account is installed in that mode, else null.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

from jobs.endpoints import EndpointSpec, ReadFunc
from jobs.registry import Registry
from models.enums import MODES
from service.signed import SignedHandler, SignedRequest


class PerModeHandler(SignedHandler):
    """`{"account_id", "live": read(account, "live") | None, "test": ...}`, reading only the
    modes the account has installed."""

    read: ClassVar[ReadFunc]

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        answer: dict[str, Any] = {"account_id": req.account_id}
        for mode in MODES:
            if self.installations.is_active(req.account_id, mode):
                answer[mode] = await self.storage.run(type(self).read, req.account_id, mode)
            else:
                answer[mode] = None
        return answer


def handler_for(spec: EndpointSpec) -> type[PerModeHandler]:
    """The handler class of one declared endpoint."""
    return type(spec.handler_name, (PerModeHandler,),
                {"read": staticmethod(spec.read), "__module__": spec.read.__module__,
                 "__doc__": f"POST {spec.path}: {spec.read.__name__} per installed mode."})


def declared_routes(registry: Registry, taken: Iterable[tuple[str, Any]] = ()
                    ) -> list[tuple[str, type[PerModeHandler]]]:
    """The routes of the registry's endpoints, by path; one that a route of `taken` already
    answers is refused (it would never be reached)."""
    patterns = [re.compile(pattern) for pattern, *_ in taken]
    routes: list[tuple[str, type[PerModeHandler]]] = []
    for path, spec in sorted(registry.endpoints.items()):
        if any(p.fullmatch(path) for p in patterns):
            raise ValueError(f"the endpoint {path} of {spec.read.__module__} is a built-in "
                             "endpoint's path")
        routes.append((re.escape(path), handler_for(spec)))
    return routes
