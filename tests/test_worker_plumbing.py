"""The workers' plumbing (issue 22, item 4) and secrets in error text (issue 23): one error
text, with the account's credential values and known key shapes taken out of what is stored,
shown and logged, for a job, a task and an event handler; and the task leases' renewal, whose
database thread is given a snapshot taken on the loop. The real app on a loopback port with a
real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from conftest import WH_TEST, event, running, wait_for
from test_credentials import SECRET_VALUE, env, fire, install, registry_of, set_credential

from jobs.errors import ERROR_LIMIT, error_text
from jobs.registry import job, on_event
from jobs.task_worker import Renewal
from jobs.tasks import task
from models.events import WebhookEvent
from models.jobs import JobRun
from models.tasks import Progress, Task

PLATFORM_KEY = "sk_live_51Hx9zLeakedPlatformKey"
TOKEN = "ya29.a0AfH6-token_value"


def leaky_message(value: str) -> str:
    return (f"acme refused {value!r} with platform key {PLATFORM_KEY}, "
            f"Authorization: Bearer {TOKEN}")


def assert_clean(text: str) -> None:
    for secret in (SECRET_VALUE, PLATFORM_KEY, "51Hx9zLeakedPlatformKey", TOKEN):
        assert secret not in text
    assert "[redacted]" in text


# ---- the one function --------------------------------------------------------------------------

def test_error_text_redacts_values_and_key_shapes_then_cuts():
    exc = RuntimeError("sk_live_51Habc rk_test_9Z whsec_ab/+= absec_dev12 Bearer eyJ.a-b~ "
                       "s3cr3t-value abc")
    assert error_text(exc, {"s3cr3t-value", "abc"}) == (  # "abc": too short to look for
        "RuntimeError: sk_live_[redacted] rk_test_[redacted] whsec_[redacted] "
        "absec_[redacted] Bearer [redacted] [redacted] abc")
    assert error_text(exc, message_only=True, prefix="bad input: ").startswith(
        "bad input: sk_live_[redacted] ")
    # a value across the cut is redacted before the cut: no part of it is left
    value = "0123456789abcdefghij"
    cut = error_text(RuntimeError("y" * (ERROR_LIMIT - 20) + value), {value})
    assert len(cut) == ERROR_LIMIT and "012345" not in cut and cut.endswith("[redac")
    assert len(error_text(RuntimeError("z" * 100_000))) == ERROR_LIMIT


# ---- a job, a task and an event handler whose error holds a secret -----------------------------

@pytest.mark.gen_test(timeout=60)
async def test_a_job_error_holding_a_credential_and_a_key_is_redacted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    @job("teller", every=3600, attempts=2, retry_delay=0.01)
    async def teller(ctx):
        raise RuntimeError(leaky_message(await ctx.credentials.get("acme_key")))

    async with running(env(tmp_path), registry=registry_of(teller)) as app:
        await install(app)
        assert (await set_credential(app)).status_code == 200
        assert await fire(app, "teller") == "failed"
        (run,) = await app.backend.storage.run(lambda: list(JobRun.select()))
    assert run.error.startswith("RuntimeError: acme refused '[redacted]'")
    assert_clean(run.error)
    assert_clean(caplog.text)


@pytest.mark.gen_test(timeout=60)
async def test_a_task_error_holding_a_credential_and_a_key_is_redacted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    @task(attempts=1)
    async def exporter(ctx):
        raise RuntimeError(leaky_message(await ctx.credentials.get("acme_key")))

    registry = registry_of()
    registry.tasks["exporter"] = exporter.__task_spec__
    async with running(env(tmp_path), registry=registry) as app:
        await install(app)
        assert (await set_credential(app)).status_code == 200
        resp = await app.signed("/api/tasks/exporter", {"user_id": "usr_1",
                                                        "account_id": "acct_1"})
        assert resp.status_code == 202, resp.text
        task_id = resp.json()["task_id"]

        async def shown():
            r = await app.signed("/api/tasks/status", {"task_id": task_id, "user_id": "usr_1",
                                                       "account_id": "acct_1"})
            return r.json() if r.json()["status"] == "failed" else None
        answer = await wait_for(shown, 20, "the task failed")
        row = await app.backend.storage.run(Task.get_by_id, task_id)
    assert answer["error"] == row.error  # what every user of the account is shown
    assert_clean(row.error)
    assert_clean(caplog.text)


@pytest.mark.gen_test(timeout=60)
async def test_an_event_handler_error_holding_a_credential_is_redacted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    @on_event("customer.created")
    async def on_customer(ctx):
        raise RuntimeError(leaky_message(await ctx.credentials.get("acme_key")))

    async with running(env(tmp_path), registry=registry_of(on_customer)) as app:
        await install(app, mode="test")
        assert (await set_credential(app, mode="test")).status_code == 200
        ev = event("customer.created", "acct_1", livemode=False)
        await app.webhook(ev, secret=WH_TEST)
        await app.settle()
        row = await app.backend.storage.run(WebhookEvent.get_by_id, ev["id"])
    assert row.status == "failed"
    assert_clean(row.last_error)
    assert_clean(caplog.text)


# ---- the task leases' renewal ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_the_task_lease_renewal_gets_a_snapshot_taken_on_the_loop(tmp_path):
    """What the renewal writes is decided on the loop when it is taken: the database thread is
    given an immutable `Renewal`, and a change the loop makes afterwards (more progress) is not
    read from the thread (it goes with the next renewal)."""
    gate = asyncio.Event()

    @task(attempts=1)
    async def slow(ctx):
        await ctx.progress(0.25, note="quarter")  # the first report is written at once
        await ctx.progress(0.5, note="half")  # this one waits for the next renewal
        await gate.wait()
        return {}

    registry = registry_of()
    registry.tasks["slow"] = slow.__task_spec__
    # a long lease: the keeper's own renewals (every third of it) stay out of the way
    async with running(env(tmp_path, TASK_LEASE_SECONDS="120"), registry=registry) as app:
        await install(app)
        resp = await app.signed("/api/tasks/slow", {"user_id": "usr_1", "account_id": "acct_1"})
        task_id = resp.json()["task_id"]
        worker = app.backend.task_worker

        async def reported():
            run = worker.running.get(task_id)
            return run if run is not None and run.ctx.progress_note == "half" else None
        run = await wait_for(reported, 20, "the task reported progress")
        assert run.ctx.unreported

        renew = worker.leases.renewal([task_id])
        renewal = renew.__self__  # type: ignore[attr-defined]
        assert isinstance(renewal, Renewal)
        assert dataclasses.fields(renewal) and renewal.__dataclass_params__.frozen
        assert renewal.renew == (task_id,) and renewal.ending == frozenset()
        assert renewal.reports == (Progress(task_id, 1, 0.5, "half"),)
        assert not run.ctx.unreported  # taken on the loop: counted as written

        await run.ctx.progress(0.75, note="later")  # after the snapshot, before the thread
        renewed = await app.backend.storage.run(renew, worker.leases.until())
        assert renewed == {task_id}
        row = await app.backend.storage.run(Task.get_by_id, task_id)
        assert (row.progress, row.note) == (0.5, "half")  # the snapshot's, not the loop's now
        assert run.ctx.unreported  # "later" goes with the next renewal
        gate.set()
