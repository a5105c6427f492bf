"""Signed endpoints declared beside the code whose data they show, without importing `service/`.

    from stripe_app_backend import EndpointContext, SignedRequest, endpoint

    @endpoint("/api/notes", fields={"note": str}, roles=["admin"], description="Save a note")
    async def notes(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
        await ctx.db(save_note, ctx.account_id, ctx.mode, req.body["note"])
        return {"saved": True}

Like `@job`, the decorator only marks the function: the registry collects it
(`Registry.endpoints`, by path, an `EndpointSpec`) and the service turns each into a
`SignedHandler` (`service/declared.py`). `POST <path>` then passes every check of
`service/signed.py` (signature, CORS and the preflight, 403 `not_installed` unless the account is
installed in some mode), then:

- 403 `role_required` when `roles` is given and the signed `stripe_roles` hold none of them;
- 400 `bad_request` when a declared field is missing from the body or has the wrong type
  (`fields`: name -> `str`, `int`, `float` or `bool`; an int is a float, a bool is not an int);

and answers 200 with the function's return value as JSON. `APIError` raised by the function is
answered with its status and the one JSON error body; `BadInput` with 400 `bad_request`.
`ctx` is an `EndpointContext`: `ctx.account_id`, `ctx.user_id`, `ctx.modes` (the modes the
account has installed, in `MODES` order: live, test, sandbox), `ctx.mode` (the first of them:
live when installed live, else test, else sandbox) and `ctx.db(fn, *args)` (runs `fn` in a
database thread). An answer per mode loops `MODES` (`models.enums`), so that a sandbox install
has its entry too.

The older form, `@per_mode_endpoint(path)` on `def read(account_id, mode)`, still works: it
answers `{"account_id", "live": read(account, "live") | null, "test": ..., "sandbox": ...}`, a
key per mode of `MODES`, null for the modes the account has not installed (`read` runs in a
database thread).

The handler class is named after the function (`notes` -> `NotesHandler`), which is how the
request metrics label it. A path must be a literal `/api/...` path that no built-in endpoint
answers (`make_app` refuses one that does).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from models.enums import MODES, Mode

if TYPE_CHECKING:
    from models.db import Storage

PATH = re.compile(r"/api(/[a-z0-9_-]+)+")
#: The field types an endpoint may declare (what JSON carries, and what OpenAPI names).
FIELD_TYPES: tuple[type, ...] = (str, int, float, bool)

ReadFunc = Callable[[str, str], Any]
EndpointFunc = Callable[[Any, "EndpointContext"], Awaitable[Any]]
F = TypeVar("F", bound=ReadFunc)
E = TypeVar("E", bound=EndpointFunc)


@dataclass(frozen=True)
class EndpointSpec:
    """One declared endpoint. `func` is either `async def f(req, ctx)` (`@endpoint`) or
    `def read(account_id, mode)` (`@per_mode_endpoint`, run in a database thread)."""

    path: str
    func: Callable[..., Any]
    handler_name: str  # the handler class the service makes (and the metrics' label)
    fields: dict[str, type] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    description: str = ""
    single_use: bool = False  # each signature accepted once (an endpoint that changes state)

    @property
    def read(self) -> Callable[..., Any]:
        """The function (the older name)."""
        return self.func

    @property
    def per_mode(self) -> bool:
        """Whether this is a `@per_mode_endpoint` (a plain read per installed mode)."""
        return not inspect.iscoroutinefunction(self.func)


@dataclass
class EndpointContext:
    """What an `@endpoint` function gets beside the request: who calls, the account's installed
    modes, and the database."""

    account_id: str
    user_id: str
    #: The modes the account has installed, live first (never empty: else 403 before the call).
    modes: tuple[Mode, ...]
    storage: Storage = field(repr=False)

    @property
    def mode(self) -> Mode:
        """The first installed mode of `MODES`: live when the account has installed the app in
        live mode, else test, else sandbox (test when none, which `modes` never is)."""
        return self.modes[0] if self.modes else Mode.TEST

    @property
    def livemode(self) -> bool:
        return self.mode == Mode.LIVE

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a synchronous database function in a database thread; its return value."""
        return await self.storage.run(fn, *args, **kwargs)


def _handler_name(func: Callable[..., Any]) -> str:
    return "".join(part.title() for part in func.__name__.split("_") if part) + "Handler"


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not PATH.fullmatch(path):
        raise ValueError(f"endpoint path {path!r} must match {PATH.pattern}")


def endpoint(path: str, *, fields: dict[str, type] | None = None,
             roles: Iterable[str] | None = None,
             description: str = "", single_use: bool = False) -> Callable[[E], E]:
    """Mark `async def f(req: SignedRequest, ctx: EndpointContext)` as the signed endpoint
    `POST path`, answering its return value as JSON (see the module doc). `single_use=True`
    for an endpoint that changes state: each signature is accepted once, on every replica
    (401 `signature_replayed` after that), as on the built-in task start and credentials."""
    _check_path(path)
    declared = dict(fields or {})
    for name, kind in declared.items():
        if not isinstance(name, str) or kind not in FIELD_TYPES:
            raise ValueError(f"endpoint {path}: field {name!r} must be one of str, int, float, "
                             "bool")
    if isinstance(roles, str):
        roles = (roles,)
    role_ids = tuple(roles or ())
    if not all(isinstance(r, str) and r for r in role_ids):
        raise ValueError(f"endpoint {path}: roles must be role ids (strings)")

    def mark(func: E) -> E:
        is_async: bool = inspect.iscoroutinefunction(func)
        if not is_async:
            raise TypeError(f"endpoint {getattr(func, '__name__', func)} must be an async "
                            "function (req, ctx)")
        text = description or inspect.getdoc(func) or ""
        func.__endpoint_spec__ = EndpointSpec(  # type: ignore[attr-defined]
            path, func, _handler_name(func), declared, role_ids, text, single_use)
        return func

    return mark


def per_mode_endpoint(path: str) -> Callable[[F], F]:
    """Mark `def read(account_id, mode)` as the signed endpoint `path`, answering `read`'s value
    for each mode the calling account has installed (see the module doc)."""
    _check_path(path)

    def mark(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"endpoint {func.__name__} must be a plain function: it runs in a "
                            "database thread")
        func.__endpoint_spec__ = EndpointSpec(  # type: ignore[attr-defined]
            path, func, _handler_name(func))
        return func

    return mark


def installed_modes(is_active: Callable[[str, str], bool], account_id: str
                    ) -> tuple[Mode, ...]:
    """The modes `account_id` has installed, in `MODES` order (live first)."""
    return tuple(mode for mode in MODES if is_active(account_id, mode))
