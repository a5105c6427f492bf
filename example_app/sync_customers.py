"""The example task: count an account's customers, resumably, and the endpoint that shows it.

It shows the whole path of a long-running task: the extension starts it (`POST
/api/tasks/sync_customers`, optional signed `page_size`), it pages through the account's
customers with the library's auto-pagination (`ctx.stripe`, so `Stripe-Account` is set), stores
a checkpoint after every page (the last customer counted and the partial figures, in
`CustomerSummary`, an `AccountModel` that an uninstall deletes), reports progress, and stores the
summary (count, most recent customer) that the extension reads:

    POST /api/customers/summary -> {"account_id", "live": summary|null, "test": ..., "sandbox": ...}
        summary: {"count", "latest": {"id", "created"}|null, "synced_at", "syncing"}, per
        installed mode, null before the first sync; 403 when not installed.

A restart midway (a crash, a deploy) resumes: the next attempt of the same task starts the list
after its last checkpoint instead of from the beginning. Stripe lists carry no total, so the
progress fraction is an estimate (counted / (counted + one page)) that reaches 1 at the end.
"""

from __future__ import annotations

import time
from typing import Any

import peewee as pw
from stripe.params import CustomerListParams

from stripe_app_backend import (
    MODES,
    AccountModel,
    BadInput,
    EndpointContext,
    SignedRequest,
    TaskContext,
    endpoint,
    task,
)

DEFAULT_PAGE = 100


# ---- the table and its queries (run in a database thread) ------------------------------------
class CustomerSummary(AccountModel):
    """One customer summary per account and mode, with the cursor of the sync in progress."""

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


def _of(account_id: str, mode: str, task_id: str | None = None) -> Any:
    """The condition selecting the account's row in `mode` (and only while `task_id` runs)."""
    where = (CustomerSummary.account_id == account_id) & (CustomerSummary.mode == mode)
    return where if task_id is None else where & (CustomerSummary.run_task == task_id)


def begin(account_id: str, mode: str, task_id: str) -> dict[str, Any]:
    """The checkpoint to resume from: this task's own, or a fresh one."""
    CustomerSummary.insert(account_id=account_id, mode=mode).on_conflict_ignore().execute()
    row = CustomerSummary.get(_of(account_id, mode))
    if row.run_task != task_id:
        row.run_task, row.run_cursor, row.run_count = task_id, None, 0
        row.run_latest_id = row.run_latest_created = None
        row.save()
    return {"cursor": row.run_cursor, "count": row.run_count, "latest_id": row.run_latest_id,
            "latest_created": row.run_latest_created}


def checkpoint(account_id: str, mode: str, task_id: str, state: dict[str, Any]) -> None:
    """Store the partial figures after a page, unless another run of the task took over."""
    (CustomerSummary.update(run_cursor=state["cursor"], run_count=state["count"],
                            run_latest_id=state["latest_id"],
                            run_latest_created=state["latest_created"])
     .where(_of(account_id, mode, task_id)).execute())


def complete(account_id: str, mode: str, task_id: str, state: dict[str, Any]) -> None:
    """Store the final figures as the summary and clear the sync in progress."""
    (CustomerSummary.update(count=state["count"], latest_id=state["latest_id"],
                            latest_created=state["latest_created"], synced_at=time.time(),
                            run_task=None, run_cursor=None, run_count=0, run_latest_id=None,
                            run_latest_created=None)
     .where(_of(account_id, mode, task_id)).execute())


# ---- the endpoint ----------------------------------------------------------------------------
def summary(account_id: str, mode: str) -> dict[str, Any] | None:
    """The summary as the API shows it, or None before the first sync."""
    row = CustomerSummary.get_or_none(_of(account_id, mode))
    if row is None:
        return None
    latest = ({"id": row.latest_id, "created": row.latest_created} if row.latest_id else None)
    return {"count": row.count, "latest": latest,
            "synced_at": int(row.synced_at) if row.synced_at else None,
            "syncing": row.run_task is not None}


@endpoint("/api/customers/summary", description="The customer summary in each installed mode")
async def customer_summary(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    """`{"account_id", "live": summary|null, "test": ..., "sandbox": ...}` (null: not installed in
    that mode, or before the first sync)."""
    answer: dict[str, Any] = {"account_id": ctx.account_id}
    for mode in MODES:
        answer[mode] = await ctx.db(summary, ctx.account_id, mode) if mode in ctx.modes else None
    return answer


# ---- the task --------------------------------------------------------------------------------
@task(attempts=5, timeout=6 * 3600, concurrency_per_account=1,
      permissions=["customer_read"])
async def sync_customers(ctx: TaskContext) -> dict[str, Any]:
    """Count the account's customers and find the most recent one (resumes after a restart)."""
    size = ctx.input.get("page_size", DEFAULT_PAGE)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 100:
        raise BadInput("page_size must be a whole number from 1 to 100")
    state = await ctx.db(begin, ctx.account_id, ctx.mode, ctx.task_id)
    params: CustomerListParams = {"limit": size}
    if state["cursor"]:
        params["starting_after"] = state["cursor"]
    page = await ctx.stripe.v1.customers.list_async(params)
    in_page = 0
    async for customer in page.auto_paging_iter():
        state["count"] += 1
        created = int(getattr(customer, "created", None) or 0)
        if state["latest_created"] is None or created >= state["latest_created"]:
            state["latest_id"], state["latest_created"] = customer.id, created
        state["cursor"] = customer.id
        in_page += 1
        if in_page == size:  # a page done: checkpoint, then report
            in_page = 0
            await ctx.db(checkpoint, ctx.account_id, ctx.mode, ctx.task_id, state)
            await ctx.progress(state["count"] / (state["count"] + size),
                               note=f"{state['count']} customers so far")
    await ctx.db(complete, ctx.account_id, ctx.mode, ctx.task_id, state)
    await ctx.progress(1.0, note=f"{state['count']} customers")
    return {"count": state["count"], "latest": state["latest_id"]}
