"""The app factory: routes and the shared objects handlers reach through `BaseHandler`.

    make_app(config, storage, scheduler=None, *, installations, events, registry, metrics,
             tracker) -> tornado.web.Application

Routes (README, "Endpoints"): `/api/...` signed extension endpoints (the built-in ones of
`API_ROUTES`, then those the registry's code declares: `service/declared.py`), `/install` and
the install callback, `/webhooks`, `/healthz`, `/metrics`; anything else is a JSON 404 (with
CORS, and a preflight, under `/api/`).
"""

from __future__ import annotations

import time
from typing import Any

import tornado.web

from jobs.events import EventProcessor
from jobs.registry import Registry
from jobs.scheduler import JobScheduler
from models.db import Storage
from models.installation_index import InstallationIndex
from service.api_fallback import ApiNotFoundHandler
from service.base import NotFoundHandler
from service.config import Config
from service.credentials import (
    DeleteCredentialHandler,
    ListCredentialsHandler,
    OAuthExchangeHandler,
    SetCredentialHandler,
)
from service.declared import declared_routes
from service.doctor import DoctorReport
from service.extension import InstallationStatusHandler, JobsHandler, WhoAmIHandler
from service.guard import GuardedApplication
from service.health import HealthHandler, MetricsHandler
from service.install import CallbackHandler, InstallHandler
from service.metrics import Metrics
from service.rejections import RejectionLog
from service.status import status_routes
from service.tasks import TaskStartHandler, TaskStatusHandler
from service.throttle import LoginThrottle
from service.tracker import RequestTracker
from service.webhooks import WebhookHandler

#: The built-in signed extension endpoints (paths start with /api/). The app's own come from
#: its declarations (`jobs/endpoints.py`), after these.
API_ROUTES: list[tuple[str, type]] = [
    (r"/api/installation", InstallationStatusHandler),
    (r"/api/jobs", JobsHandler),
    (r"/api/whoami", WhoAmIHandler),
    (r"/api/tasks/status", TaskStatusHandler),  # before the task names: "status" is reserved
    (r"/api/tasks/([a-z][a-z0-9_]{0,63})", TaskStartHandler),
    (r"/api/credentials/set", SetCredentialHandler),
    (r"/api/credentials/list", ListCredentialsHandler),
    (r"/api/credentials/delete", DeleteCredentialHandler),
    (r"/api/oauth/([a-z0-9_]{1,64})/exchange", OAuthExchangeHandler),
]


def make_app(config: Config, storage: Storage, scheduler: JobScheduler | None = None, *,
             installations: InstallationIndex, events: EventProcessor, registry: Registry,
             metrics: Metrics, tracker: RequestTracker,
             extra_routes: list[tuple[str, type]] | None = None,
             **settings: Any) -> tornado.web.Application:
    routes: list[Any] = [
        *API_ROUTES,
        *declared_routes(registry, taken=API_ROUTES),
        *(extra_routes or []),
        (r"/api/.*", ApiNotFoundHandler),
        (r"/install", InstallHandler),
        (config.callback_path, CallbackHandler),
        (r"/webhooks", WebhookHandler),
        (r"/healthz", HealthHandler),
        (r"/metrics", MetricsHandler),
        *status_routes(),
    ]
    return GuardedApplication(
        routes,
        default_handler_class=NotFoundHandler,
        config=config,
        storage=storage,
        scheduler=scheduler,
        installations=installations,
        events=events,
        registry=registry,
        metrics=metrics,
        tracker=tracker,
        compress_response=False,
        xheaders=False,
        doctor=settings.pop("doctor", None) or DoctorReport(),
        login_throttle=settings.pop("login_throttle", None) or LoginThrottle(),
        rejections=settings.pop("rejections", None) or RejectionLog(storage),
        started_at=time.time(),
        **settings,
    )
