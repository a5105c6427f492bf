"""The one module a Stripe App's backend code imports: the public, typed surface of the project.

    from stripe_app_backend import JobContext, SignedRequest, EndpointContext, endpoint, job

    @job(every=3600, permissions=["balance_read"])
    async def hourly(ctx: JobContext) -> None: ...

    @endpoint("/api/hello", fields={"name": str})
    async def hello(req: SignedRequest, ctx: EndpointContext) -> dict[str, str]:
        return {"hello": req.body["name"]}

An app is a package (or several) named by `APP_PACKAGES` or `run.py --app`; every module of it
is imported at start-up and what it declares is served. See docs/apps.md for the guide and for
what stays stable between minor versions: the names below, their signatures, and the context
attributes documented there.

Nothing inside the project (service/, jobs/, models/, cli/) imports this module: it only
re-exports.
"""

from __future__ import annotations

from importlib import metadata

from jobs.endpoints import EndpointContext, EndpointSpec, endpoint
from jobs.events import EventContext
from jobs.oauth import OAuthProvider
from jobs.registry import job, on_event
from jobs.runner import JobContext
from jobs.tasks import BadInput, TaskContext, task
from models.base import AccountModel
from models.enums import MODES, Mode
from service.base import APIError
from service.signed import SignedRequest


def _version() -> str:
    try:
        return metadata.version("stripe-app-backend")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "APIError",
    "AccountModel",
    "BadInput",
    "EndpointContext",
    "EndpointSpec",
    "EventContext",
    "JobContext",
    "MODES",
    "Mode",
    "OAuthProvider",
    "SignedRequest",
    "TaskContext",
    "__version__",
    "endpoint",
    "job",
    "on_event",
    "task",
]
