"""The signed endpoint of the example task `sync_customers` (`jobs/sync_customers.py`).

    POST /api/customers/summary -> {"account_id", "live": summary|null, "test": summary|null}
        summary: {"count", "latest": {"id", "created"}|null, "synced_at", "syncing"}, per
        installed mode, null before the first sync; 403 when not installed.
"""

from __future__ import annotations

from typing import Any

from jobs.sync_customers import summary
from models.enums import MODES
from service.signed import SignedHandler, SignedRequest


class CustomerSummaryHandler(SignedHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        answer: dict[str, Any] = {"account_id": req.account_id}
        for mode in MODES:
            if self.installations.is_active(req.account_id, mode):
                answer[mode] = await self.storage.run(summary, req.account_id, mode)
            else:
                answer[mode] = None
        return answer
