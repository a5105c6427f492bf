"""Signed endpoints declared beside the code whose data they show, without importing `service/`.

    from jobs.endpoints import per_mode_endpoint

    @per_mode_endpoint("/api/balance")
    def balance(account_id: str, mode: str) -> dict[str, Any] | None:
        ...                                   # a query; runs in a database thread

Like `@job`, the decorator only marks the function: the registry collects it
(`Registry.endpoints`, by path) and the service turns each into a `SignedHandler`
(`service/declared.py`). `POST <path>` then passes every check of `service/signed.py`
(signature, CORS and the preflight, 403 unless the account is installed in some mode) and
answers

    {"account_id": ..., "live": read(account_id, "live") | null, "test": read(..., "test") | null}

calling `read` in a database thread for each mode the account has installed, null for the
others. The handler class is named after the function (`balance` -> `BalanceHandler`), which is
how the request metrics label it. A path must be a literal `/api/...` path that no built-in
endpoint answers (`make_app` refuses one that does).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

PATH = re.compile(r"/api(/[a-z0-9_-]+)+")

ReadFunc = Callable[[str, str], Any]
F = TypeVar("F", bound=ReadFunc)


@dataclass(frozen=True)
class EndpointSpec:
    path: str
    read: ReadFunc  # (account_id, mode) -> a JSON value; runs in a database thread
    handler_name: str  # the handler class the service makes (and the metrics' label)


def per_mode_endpoint(path: str) -> Callable[[F], F]:
    """Mark `def read(account_id, mode)` as the signed endpoint `path`, answering `read`'s value
    for each mode the calling account has installed (see the module doc)."""
    if not PATH.fullmatch(path):
        raise ValueError(f"endpoint path {path!r} must match {PATH.pattern}")

    def mark(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"endpoint {func.__name__} must be a plain function: it runs in a "
                            "database thread")
        name = "".join(part.title() for part in func.__name__.split("_") if part) + "Handler"
        func.__endpoint_spec__ = EndpointSpec(path, func, name)  # type: ignore[attr-defined]
        return func

    return mark
