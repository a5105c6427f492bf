"""The operator's status page as a black box over HTTP (issue 16): 503 without a token, the
log-in cookie, bearer tokens, CSRF on every action, figures from the database, replay and
resume; and its queries stay on indexes (100,000 installations, a million events)."""

from __future__ import annotations

import os
import re
import time

import httpx
import pytest
from conftest import SAMPLE_PACKAGES, WH_LIVE, base_env, event, running
from tornado.web import create_signed_value

from jobs.registry import Registry, on_event
from models.db import open_database
from models.installation import Installation, apply_state, set_paused
from models.migrate import migrate
from service.status import COOKIE, _derive

TOKEN = "status-Pz4Xk9Qm2Wr7Lt1Hb6Vn3Cd8Gs5Jf0Ya"  # random-looking: 32+ characters


class Flaky:
    """An app's event handler that fails until told otherwise."""

    fail = True

    @staticmethod
    @on_event("customer.created")
    async def on_customer(ctx):
        if Flaky.fail:
            raise RuntimeError("downstream <b>unavailable</b>")


def registry() -> Registry:
    reg = Registry.discover(SAMPLE_PACKAGES)
    reg.add_module(Flaky)
    return reg


def env(tmp_path, **extra):
    return base_env(tmp_path, OPERATOR_TOKEN=TOKEN, **extra)


async def login(app) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=app.url, timeout=20)
    resp = await client.post("/status/login", data={"token": TOKEN})
    assert resp.status_code == 303 and resp.headers["location"] == "/status"
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="_csrf" value="([0-9a-f]{64})"', html).group(1)


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.gen_test(timeout=30)
async def test_off_without_token(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for path in ("/status", "/status.json", "/status/login"):
            resp = await app.client.get(path, headers=BEARER)
            assert resp.status_code == 503, path
            assert resp.json()["error"]["code"] == "not_configured"
        resp = await app.client.post("/status/login", data={"token": TOKEN})
        assert resp.status_code == 503


@pytest.mark.gen_test(timeout=30)
async def test_authentication(tmp_path):
    async with running(env(tmp_path)) as app:
        c = app.client
        # no credentials: the page sends a browser to the form, the rest answers 401
        resp = await c.get("/status")
        assert resp.status_code == 303 and resp.headers["location"] == "/status/login"
        assert (await c.get("/status.json")).status_code == 401
        assert (await c.post("/status/replay", data={"event_id": "evt_1"})).status_code == 401
        form = await c.get("/status/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        # bearer: right and wrong
        resp = await c.get("/status.json", headers=BEARER)
        assert resp.status_code == 200 and resp.json()["installations"]["active"] == {
            "live": 0, "test": 0, "sandbox": 0}
        # this process has said it is alive (its heartbeat), with its pid
        (me,) = resp.json()["replicas"]
        assert me["pid"] == os.getpid() and me["seen_at"] > time.time() - 60
        for bad in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
            resp = await c.get("/status.json", headers={"Authorization": bad})
            assert resp.status_code == 401, bad
            assert TOKEN not in resp.text
        # the form: a wrong token is refused, the right one sets the cookie
        resp = await c.post("/status/login", data={"token": "wrong-token-wrong-token"})
        assert resp.status_code == 401 and "not the operator token" in resp.text
        assert COOKIE not in resp.headers.get("set-cookie", "")
        resp = await c.post("/status/login", data={"token": TOKEN})
        assert resp.status_code == 303
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie
        browser = await login(app)
        page = await browser.get("/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script" not in page.text  # nothing to run: server-rendered
        assert (await browser.get("/status.json")).status_code == 200
        # a cookie signed with another token's key is not a session
        forged = create_signed_value(_derive("another-operator-token", "cookie"), COOKIE,
                                     "x").decode()
        async with httpx.AsyncClient(base_url=app.url, cookies={COOKIE: forged}) as other:
            assert (await other.get("/status.json")).status_code == 401
        # a bad page number is a 400, not a traceback
        resp = await c.get("/status.json?events=-1", headers=BEARER)
        assert resp.status_code == 400
        await browser.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_wrong_method_and_odd_page_numbers(tmp_path):
    """A 405 lists in `Allow` the methods the route really has (found by tests/test_openapi.py);
    a page number that `str.isdigit` accepts but `int` does not is a 400, not a 500."""
    async with running(env(tmp_path)) as app:
        c = app.client
        for method, path, allow in (("POST", "/status", "GET"), ("PUT", "/status.json", "GET"),
                                    ("GET", "/status/resume", "POST"),
                                    ("OPTIONS", "/status/doctor", "POST"),
                                    ("PUT", "/status/login", "GET, POST")):
            resp = await c.request(method, path, headers=BEARER)
            assert resp.status_code == 405, (method, path)
            assert resp.headers["allow"] == allow, (method, path)
        for page in ("\u00b2", "\u0661", "1" * 7):
            resp = await c.get("/status.json", params={"events": page}, headers=BEARER)
            assert resp.status_code == 400, page
            assert resp.json()["error"]["code"] == "bad_request"


@pytest.mark.gen_test(timeout=60)
async def test_figures_replay_and_resume(tmp_path):
    async with running(env(tmp_path), registry=registry()) as app:
        Flaky.fail = True
        # an install through the API: the signed authorized webhook
        resp = await app.webhook(event("account.application.authorized", account="acct_status"))
        assert resp.status_code == 200
        # applied before the next event is sent: processed side by side, the customer event
        # could find the install not applied yet and fail for that reason instead of its own
        await app.settle()
        failing = event("customer.created", account="acct_status", event_id="evt_fails")
        assert (await app.webhook(failing, WH_LIVE)).status_code == 200
        await app.settle()
        data = (await app.client.get("/status.json", headers=BEARER)).json()
        assert data["installations"]["active"] == {"live": 1, "test": 0, "sandbox": 0}
        assert [r["account_id"] for r in data["installations"]["latest_installs"]] == [
            "acct_status"]
        assert data["webhooks"]["open"]["failed"] == 1
        (problem,) = data["webhooks"]["problems"]
        assert problem["id"] == "evt_fails" and "unavailable" in problem["last_error"]
        current = data["webhooks"]["hourly"][-1]
        assert current["processed"] == 1 and current["failed"] == 1
        assert len(data["webhooks"]["hourly"]) == 24
        assert data["jobs"]["jobs"][0]["job"] == "balance_snapshot"
        assert data["health"]["version"] and data["health"]["uptime_seconds"] >= 0

        browser = await login(app)
        page = (await browser.get("/status")).text
        assert "acct_status" in page and "evt_fails" in page and "<svg" in page
        assert "downstream &lt;b&gt;unavailable&lt;/b&gt;" in page  # escaped, not markup
        token = csrf_of(page)
        # an action without (or with a wrong) CSRF token is refused
        for data_ in ({"event_id": "evt_fails"}, {"event_id": "evt_fails", "_csrf": "0" * 64}):
            resp = await browser.post("/status/replay", data=data_)
            assert resp.status_code == 403
        # replay, now that the handler works
        Flaky.fail = False
        resp = await browser.post("/status/replay", data={"event_id": "evt_fails",
                                                          "_csrf": token})
        assert resp.status_code == 303 and "done=processed" in resp.headers["location"]
        page = (await browser.get(resp.headers["location"])).text
        assert "Event evt_fails replayed: processed." in page
        assert "No failed or dead events." in page

        # pause (as the runner does when Stripe revokes access), then resume from the page
        view = await app.backend.storage.run(set_paused, "acct_status", "live", True,
                                             "Stripe revoked access")
        app.backend.installations.put(view)
        assert app.backend.scheduler.job_count() == 0
        page = (await browser.get("/status")).text
        assert "Stripe revoked access" in page and 'aria-label="resume acct_status live"' in page
        resp = await browser.post("/status/resume", data={"account_id": "acct_status",
                                                          "mode": "live", "_csrf": token})
        assert resp.status_code == 303 and "done=resumed" in resp.headers["location"]
        assert not (await app.backend.storage.run(Installation.get)).jobs_paused
        assert app.backend.scheduler.job_count() == 1  # this process resumed at once
        # scripts: bearer actions need no CSRF and answer JSON
        resp = await app.client.post("/status/replay", data={"event_id": "evt_none"},
                                     headers=BEARER)
        assert resp.status_code == 404
        assert resp.json()["error"] == {"code": "not_found", "message": "No stored event evt_none."}
        resp = await app.client.post("/status/resume", data={"account_id": "acct_none",
                                                             "mode": "live"}, headers=BEARER)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        resp = await app.client.post("/status/resume", data={"account_id": "acct_status",
                                                             "mode": "sideways"},
                                     headers=BEARER)
        assert resp.status_code == 400
        resp = await app.client.post("/status/doctor", headers=BEARER)
        assert resp.status_code == 200 and resp.json()["done"] == "doctor"
        data = (await app.client.get("/status.json", headers=BEARER)).json()
        assert data["health"]["doctor"]["findings"]
        # log out ends the session
        resp = await browser.post("/status/logout", data={"_csrf": token})
        assert resp.status_code == 303
        assert (await browser.get("/status.json")).status_code == 401
        await browser.aclose()


def test_status_queries_use_indexes(tmp_path):
    """SQLite's plan for every status query is an index search, never a table scan, so the
    page costs the same with 100,000 installations and a million events."""
    from models.status import Pages, snapshot

    db = open_database(f"sqlite:///{tmp_path}/plan.db")
    migrate(db)
    apply_state("acct_1", "live", True, int(time.time()), "setup")
    plans: list[tuple[str, str]] = []
    original = db.execute_sql

    def explain(sql, params=None, *args, **kw):
        if sql.lstrip().upper().startswith("SELECT"):
            rows = original("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            plans.extend((sql, row[-1]) for row in rows)
        return original(sql, params, *args, **kw)

    db.execute_sql = explain
    try:
        snapshot(time.time(), Pages(paused=1, events=2, failures=3))
    finally:
        del db.execute_sql
    assert len({sql for sql, _ in plans}) >= 9
    scans = [(sql, p) for sql, p in plans if p.startswith("SCAN")]  # a table or whole index
    assert not scans, scans


def test_snapshot_on_both_databases(db_url):
    """Hourly buckets and pages agree on SQLite and PostgreSQL (whose casts round)."""
    from models.events import WebhookEvent
    from models.jobs import JobRun
    from models.status import PAGE_SIZE, Pages, snapshot

    db = open_database(db_url)
    migrate(db)
    now = time.time()
    rows = []
    for k, status in [(0, "processed"), (0, "failed"), (5, "dead"), (23, "processed"),
                      (24, "processed")]:  # 24 hours ago: outside the chart
        for i in range(2):
            rows.append({"id": f"evt_{k}_{status}_{i}", "type": "customer.created",
                         "account_id": "acct_1", "livemode": True, "created": int(now),
                         "payload": "{}", "received_at": now - k * 3600 - 0.4 * i,
                         "status": status, "last_error": "boom" if status != "processed"
                         else None})
    WebhookEvent.insert_many(rows).execute()
    for i in range(PAGE_SIZE + 3):
        apply_state(f"acct_{i:03d}", "test", True, int(now), "setup")
        set_paused(f"acct_{i:03d}", "test", True, "revoked")
    JobRun.insert(job="j", account_id="acct_1", mode="live", fire_time=int(now),
                  started_at=now, outcome="failed", error="x").execute()
    data = snapshot(now, Pages())
    hourly = data["webhooks"]["hourly"]
    assert (hourly[23].get("processed"), hourly[23].get("failed")) == (2, 2)
    assert hourly[18].get("dead") == 2 and hourly[0].get("processed") == 2
    assert sum(sum(v for k, v in h.items() if k != "hour") for h in hourly) == 8
    assert data["webhooks"]["open"] == {"pending": 0, "processing": 0, "failed": 2, "dead": 2}
    assert len(data["webhooks"]["problems"]) == 4
    assert data["installations"]["active"] == {"live": 0, "test": PAGE_SIZE + 3, "sandbox": 0}
    assert data["installations"]["paused_count"]["test"] == PAGE_SIZE + 3
    assert len(data["installations"]["paused"]) == PAGE_SIZE
    assert len(snapshot(now, Pages(paused=1))["installations"]["paused"]) == 3
    assert data["jobs"]["by_job"] == {"j": {"failed": 1}}
    assert data["tasks"] == {"open": {"queued": 0, "running": 0},
                             "finished": {"succeeded": 0, "failed": 0, "cancelled": 0},
                             "failed": []}
    from models.tasks import Task

    Task.insert_many([{"id": f"task_{i}", "account_id": "acct_1", "mode": "test", "name": "n",
                       "status": status, "finished_at": finished, "error": "boom"}
                      for i, (status, finished) in enumerate(
                          [("queued", None), ("running", None), ("succeeded", now - 60),
                           ("failed", now - 30), ("failed", now - 25 * 3600)])]).execute()
    tasks = snapshot(now, Pages())["tasks"]
    assert tasks["open"] == {"queued": 1, "running": 1}
    assert tasks["finished"] == {"succeeded": 1, "failed": 1, "cancelled": 0}  # in 24 h
    assert [t["id"] for t in tasks["failed"]] == ["task_3", "task_4"]  # newest first
    db.close()


def test_failures_count_missing_permission_and_not_configured_and_name_the_accounts(db_url):
    """A run that did not do its work for want of a permission or a key is a failure on the
    page too: counted by outcome over the last 24 h, with the accounts it happened to (the
    first ten, "more" past them), and listed with the failed runs (issue 24)."""
    from models.jobs import JobRun
    from models.status import ACCOUNTS_NAMED, Pages, snapshot

    db = open_database(db_url)
    migrate(db)
    now = time.time()

    def run(account: str, mode: str, outcome: str, ago: float = 60, seq: int = 0) -> dict:
        return {"job": "balance_snapshot", "account_id": account, "mode": mode,
                "fire_time": int(now - ago) - seq, "started_at": now - ago - seq,
                "outcome": outcome, "error": f"{outcome}: why"}

    rows = [run("acct_demo", "test", "missing_permission", seq=i) for i in range(3)]
    rows += [run("acct_nokey", "live", "not_configured"), run("acct_err", "live", "failed"),
             run("acct_ok", "live", "succeeded"),
             run("acct_old", "test", "missing_permission", ago=25 * 3600)]  # before 24 h
    rows += [run(f"acct_m{i:02d}", "live", "interrupted") for i in range(ACCOUNTS_NAMED + 2)]
    JobRun.insert_many(rows).execute()
    jobs = snapshot(now, Pages())["jobs"]
    counts = jobs["failure_counts"]
    assert list(counts) == ["failed", "interrupted", "not_configured", "missing_permission"]
    assert counts["missing_permission"] == {"runs": 3, "accounts": ["acct_demo/test"],
                                            "more": False}
    assert counts["not_configured"] == {"runs": 1, "accounts": ["acct_nokey/live"],
                                        "more": False}
    assert counts["interrupted"]["runs"] == ACCOUNTS_NAMED + 2
    assert len(counts["interrupted"]["accounts"]) == ACCOUNTS_NAMED
    assert counts["interrupted"]["more"] is True
    listed = {r["outcome"] for r in snapshot(now, Pages())["jobs"]["failures"]}
    assert {"missing_permission", "not_configured", "failed"} <= listed
    assert "succeeded" not in listed
    db.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_failures_section_shows_the_counts_and_accounts(tmp_path):
    from models.jobs import JobRun

    async with running(env(tmp_path)) as app:
        now = time.time()
        await app.backend.storage.run(lambda: JobRun.insert_many([
            {"job": "balance_snapshot", "account_id": "acct_demo", "mode": "test",
             "fire_time": int(now) - 5, "started_at": now - 5, "outcome": "missing_permission",
             "error": "missing_permission: not granted: balance_read"},
            {"job": "balance_snapshot", "account_id": "acct_nokey", "mode": "live",
             "fire_time": int(now) - 9, "started_at": now - 9, "outcome": "not_configured",
             "error": "STRIPE_SECRET_KEY_LIVE is not set"}]).execute())
        page = (await app.client.get("/status", headers=BEARER)).text
        failures = page.split("<h3>Failures</h3>", 1)[1].split("</section>", 1)[0]
        assert '<span class="failed">not_configured 1</span> (<code>acct_nokey/live</code>)' \
            in failures
        assert '<span class="failed">missing_permission 1</span> (<code>acct_demo/test</code>)' \
            in failures
        assert "not granted: balance_read" in failures and "No failed runs." not in failures


@pytest.mark.gen_test(timeout=60)
async def test_the_sandbox_mode_on_the_status_page_and_health(tmp_path):
    """Issue 26: a sandbox install counts in its own mode, a failed sandbox event says
    sandbox (its body says livemode false, as a test event's does), and its paused jobs
    resume from the page; /healthz and /metrics count it."""
    from conftest import WH_TEST

    from stripe_app_backend.harness import WH_SANDBOX

    # the sandbox's webhook secret only: no key, so no job calls Stripe from here
    async with running(env(tmp_path, STRIPE_WEBHOOK_SECRETS_SANDBOX=WH_SANDBOX),
                       registry=registry()) as app:
        Flaky.fail = True
        for secret in (WH_SANDBOX, WH_TEST):  # the same account installs in both
            ev = event("account.application.authorized", account="acct_box", livemode=False)
            assert (await app.webhook(ev, secret)).status_code == 200
        failing = event("customer.created", account="acct_box", livemode=False,
                        event_id="evt_boxfails")
        assert (await app.webhook(failing, WH_SANDBOX)).status_code == 200
        await app.settle()
        data = (await app.client.get("/status.json", headers=BEARER)).json()
        assert data["installations"]["active"] == {"live": 0, "test": 1, "sandbox": 1}
        (problem,) = data["webhooks"]["problems"]
        assert (problem["id"], problem["mode"]) == ("evt_boxfails", "sandbox")
        health = (await app.client.get("/healthz")).json()
        assert health["installations"] == {"live": 0, "test": 1, "sandbox": 1}
        metrics = (await app.client.get("/metrics")).text
        assert 'installations_active{mode="sandbox"} 1.0' in metrics

        view = await app.backend.storage.run(set_paused, "acct_box", "sandbox", True,
                                             "Stripe revoked access")
        app.backend.installations.put(view)
        browser = await login(app)
        page = (await browser.get("/status")).text
        assert "1</b>active in sandbox mode" in page and "1</b>paused in sandbox mode" in page
        assert re.search(r"evt_boxfails</code></td><td>customer.created</td><td><code>acct_box"
                         r"</code></td><td>sandbox</td>", page), page
        assert 'aria-label="resume acct_box sandbox"' in page
        resp = await browser.post("/status/resume", data={"account_id": "acct_box",
                                                          "mode": "sandbox",
                                                          "_csrf": csrf_of(page)})
        assert resp.status_code == 303 and "done=resumed" in resp.headers["location"]
        assert not app.backend.installations.get("acct_box", "sandbox").jobs_paused
        resp = await app.client.post("/status/resume", data={"account_id": "acct_box",
                                                             "mode": "prod"}, headers=BEARER)
        assert resp.status_code == 400 and "live, test or sandbox" in resp.text
