"""The signed endpoints that ship with the product (see `service/signed.py` for the checks).

    POST /api/installation -> {"account_id", "live": {"active", "since", ...}, "test": {...}}
        200 whether installed or not. Each mode with a record also says
        `permissions_granted` (null until the Install API has said), `permissions_pending`
        and `approval_required`, so the extension can ask the user to reauthorize.
    POST /api/jobs         -> {"account_id", "jobs": [{"job", "mode", "paused", "next_run",
                                                       "last_run": {"started", "outcome", ...}}]}
        403 when the account is not installed in any mode.
    POST /api/whoami       -> what the signature proved: ids, signed fields, roles.
        403 when not installed.

Write your own: in an app, `@endpoint("/api/...")` from `stripe_app_backend` (docs/apps.md,
served by `service/declared.py`); inside the project, subclass `SignedHandler`, implement
`handle`, add the route in `service/app.py`.
"""

from __future__ import annotations

from typing import Any

from jobs.scheduler import describe_jobs
from models.enums import MODES
from models.jobs import attach_last_runs
from service.signed import SignedHandler, SignedRequest


class InstallationStatusHandler(SignedHandler):
    requires_installation = False
    lean = True  # reads the in-memory index only

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        answer: dict[str, Any] = {"account_id": req.account_id}
        for mode in MODES:
            view = self.installations.get(req.account_id, mode)
            if view is None:
                answer[mode] = {"active": False, "since": None}
            else:
                granted = view.permissions_granted
                answer[mode] = {"active": view.active, "since": view.since,
                                "confirmed": view.confirmed, "jobs_paused": view.jobs_paused,
                                "permissions_granted": None if granted is None else list(granted),
                                "permissions_pending": list(view.permissions_pending),
                                "approval_required": view.approval_required,
                                "pending": view.pending}
        return answer


class JobsHandler(SignedHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        rows = describe_jobs(self.registry, self.installations, self.scheduler,
                             req.account_id)
        rows = await self.storage.run(attach_last_runs, rows, req.account_id)
        return {"account_id": req.account_id, "jobs": rows}


class WhoAmIHandler(SignedHandler):
    lean = True  # reads the in-memory index only
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        return {"user_id": req.user_id, "account_id": req.account_id,
                "signed_fields": sorted(req.signed_fields), "roles": req.roles,
                "modes": [m for m in MODES
                          if self.installations.is_active(req.account_id, m)]}
