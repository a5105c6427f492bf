"""The signed endpoints that ship with the product (see `service/signed.py` for the checks).

    POST /api/installation -> {"account_id", "live": {"active", "since", "context", ...},
                               "test": {...}, "sandbox": {...}, "org_id"?}
        200 whether installed or not; one entry per mode (`MODES`). Each says `context`: the
        `Stripe-Context` the backend's calls for the account use in that mode (an
        organization's, learnt from a signed event: `models/context.py`), null when they send
        `Stripe-Account`. Each mode with a record also says `permissions_granted` (null until
        the Install API has said), `permissions_pending` and `approval_required`, so the
        extension can ask the user to reauthorize. When the request carries `org_id` (the
        extension's `userContext.account.org_id`), it must be covered by the signature (else
        401) and be an organization id (`ORG_ID`, else 400); it is answered back as `org_id`,
        so the extension sees what the backend was told.
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

import re
from typing import Any

from jobs.scheduler import describe_jobs
from models.enums import MODES
from models.jobs import attach_last_runs
from service.base import APIError
from service.signed import SignedHandler, SignedRequest

#: An organization id as the extension's `userContext.account.org_id` holds it: `org_` then
#: letters and digits, at most 255 characters in all (the columns' width).
ORG_ID = re.compile(r"org_[A-Za-z0-9]{1,251}")


def signed_org_id(req: SignedRequest) -> str | None:
    """The request's `org_id`, None when it sent none (or null); 401 when the signature does not
    cover it, 400 when it is not an organization id."""
    if req.body.get("org_id") is None:
        return None
    value = req.signed("org_id")
    if not isinstance(value, str) or not ORG_ID.fullmatch(value):
        raise APIError(400, "org_id must be an organization id: org_ followed by letters and "
                       "digits, at most 255 characters")
    return value


class InstallationStatusHandler(SignedHandler):
    requires_installation = False
    lean = True  # reads the in-memory index only

    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        org_id = signed_org_id(req)
        answer: dict[str, Any] = {"account_id": req.account_id}
        for mode in MODES:
            view = self.installations.get(req.account_id, mode)
            if view is None:
                answer[mode] = {"active": False, "since": None, "context": None}
            else:
                granted = view.permissions_granted
                answer[mode] = {"active": view.active, "since": view.since,
                                "confirmed": view.confirmed, "jobs_paused": view.jobs_paused,
                                "permissions_granted": None if granted is None else list(granted),
                                "permissions_pending": list(view.permissions_pending),
                                "approval_required": view.approval_required,
                                "pending": view.pending, "context": view.context}
        if org_id is not None:
            answer["org_id"] = org_id
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
