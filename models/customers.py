"""App data of the shipped example task `sync_customers`: one customer summary per account and
mode, with the cursor of the sync in progress (so that a restarted sync resumes)."""

from __future__ import annotations

import peewee as pw

from models.base import AccountModel


class CustomerSummary(AccountModel):
    count = pw.IntegerField(null=True)  # of the last finished sync
    latest_id = pw.CharField(max_length=255, null=True)  # the most recently created customer
    latest_created = pw.BigIntegerField(null=True)
    synced_at = pw.DoubleField(null=True)
    # the sync in progress: its task, the last customer it counted, its partial figures
    run_task = pw.CharField(max_length=40, null=True)
    run_cursor = pw.CharField(max_length=255, null=True)
    run_count = pw.IntegerField(default=0)
    run_latest_id = pw.CharField(max_length=255, null=True)
    run_latest_created = pw.BigIntegerField(null=True)

    class Meta:
        indexes = ((("account_id", "mode"), True),)
