"""Issue 23: what one account can store, and single-use signatures.

Per-account bounds (docs/security.md, "Per-account bounds"): a task's input size (413), task
starts per minute (429 with `Retry-After`), unfinished tasks, the bytes an account's tasks take
(429 `quota_exceeded`), and credentials per mode (429 `quota_exceeded`); over a bound nothing is
stored. The counts run in the insert's transaction under the account's lock, so starts at once,
on PostgreSQL too, cannot both pass.

Single-use signatures (docs/security.md, "Single-use signatures"): endpoints that change state
(and the credentials list) accept each signature once, on every replica, whatever the header
around the signature looks like; reads accept it again.

Real backends on loopback, real SQLite and PostgreSQL, an injected clock where time matters.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import time_machine
from conftest import (
    APP_SECRET,
    SAMPLE_PACKAGES,
    WH_TEST,
    base_env,
    compact,
    event,
    running,
    sign,
    wait_for,
)
from cryptography.fernet import Fernet

from jobs.registry import Registry
from jobs.tasks import task
from models.credentials import Credential, TooManyCredentials, put_credential
from models.db import Storage, open_database
from models.installation import Installation, apply_state
from models.migrate import migrate
from models.tasks import (
    MAX_ERROR_CHARS,
    ROW_BYTES,
    InputTooLarge,
    Outcome,
    StartBounds,
    StartsThrottled,
    StorageFull,
    Task,
    TaskStatus,
    TooManyTasks,
    enqueue,
    retry_task,
    settle_and_claim,
    stored_bytes,
)
from models.used_signatures import UsedSignature
from service.signed import SignedHandler

MOMENT = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
KEY = Fernet.generate_key().decode()
ADMIN = {"id": "admin", "name": "Administrator", "type": "builtIn"}


@task()
async def echo(ctx):
    return {"input": ctx.input}


@task(max_input_bytes=64 * 1024)
async def big(ctx):
    return None


def registry_of(*funcs) -> Registry:
    """These tasks, and the declared endpoints of the default walk (the example's reads, which
    `test_reads_accept_a_signature_again` calls)."""
    registry = Registry(endpoints=dict(Registry.discover(SAMPLE_PACKAGES).endpoints))
    for f in funcs:
        registry.tasks[f.__task_spec__.name] = f.__task_spec__
    return registry


def ident(account: str = "acct_1", **fields) -> dict:
    return {**fields, "user_id": "usr_1", "account_id": account}


async def install(app, account: str = "acct_1") -> None:
    await app.webhook(event("account.application.authorized", account, livemode=False),
                      secret=WH_TEST)
    await app.settle()
    await wait_for(lambda: asyncio.sleep(0, app.backend.installations.is_active(account, "test")),
                   20, f"{account} installed")


async def rows(app) -> list[Task]:
    return await app.backend.storage.run(lambda: list(Task.select()))


@pytest.fixture
def models_db(db_url):
    db = open_database(db_url)
    migrate(db)
    yield db
    db.close()


# ---- task bounds on the model ------------------------------------------------------------------

def test_each_start_bound_refuses_and_stores_nothing(models_db):
    with time_machine.travel(MOMENT, tick=False) as clock:
        with pytest.raises(InputTooLarge):
            enqueue("acct_i", "test", "n", {"x": "a" * 100}, 1, bounds=StartBounds(input_bytes=100))
        assert Task.select().count() == 0

        per_minute = StartBounds(per_minute=3)
        for _ in range(3):
            enqueue("acct_m", "test", "n", {}, 1, bounds=per_minute)
        with pytest.raises(StartsThrottled) as refused:
            enqueue("acct_m", "test", "n", {}, 1, bounds=per_minute)
        assert refused.value.retry_after == 60
        clock.shift(25)
        with pytest.raises(StartsThrottled) as refused:
            enqueue("acct_m", "test", "n", {}, 1, bounds=per_minute)
        assert refused.value.retry_after == 35  # until the first three are a minute old
        enqueue("acct_other", "test", "n", {}, 1, bounds=per_minute)  # per account
        clock.shift(35)
        enqueue("acct_m", "test", "n", {}, 1, bounds=per_minute)
        assert Task.select().where(Task.account_id == "acct_m").count() == 4

        with pytest.raises(TooManyTasks):  # the pending bound still holds, now the second one
            enqueue("acct_m", "test", "n", {}, 1, 4, bounds=per_minute)

        # storage: the input as stored (compact JSON) and ROW_BYTES a row
        size = len(compact({"x": "a" * 900}))
        storage = StartBounds(stored_bytes=2 * (size + ROW_BYTES) - 1)
        view = enqueue("acct_s", "test", "n", {"x": "a" * 900}, 1, bounds=storage)
        assert stored_bytes("acct_s") == size + ROW_BYTES
        with pytest.raises(StorageFull):
            enqueue("acct_s", "test", "n", {"x": "b" * 900}, 1, bounds=storage)
        assert [t.id for t in Task.select().where(Task.account_id == "acct_s")] == [view.id]
        enqueue("acct_s", "test", "n", {"x": "c" * 800}, 1, bounds=storage)  # this one fits


def test_results_and_errors_count_in_bytes(models_db):
    """The size a row counts for follows its result and error as they are recorded, and a
    retry that clears them; errors count in bytes, not characters."""
    t = time.time()
    Installation.create(account_id="acct_r", mode="test", active=True, installed_at=t,
                        confirmed=True, state_at=1, created_at=t, updated_at=t)
    bounds = StartBounds(stored_bytes=3500)
    first = enqueue("acct_r", "test", "n", {}, 1, bounds=bounds)
    assert stored_bytes("acct_r") == 2 + ROW_BYTES
    _, (claimed,) = settle_and_claim([], {"n": 1}, 1, "me", 30)
    outcome = Outcome(first.id, claimed.attempts, TaskStatus.FAILED, result="r" * 1000,
                      error="é" * 1000)
    assert settle_and_claim([outcome], {}, 0, "me", 30)[0] == [True]
    assert stored_bytes("acct_r") == 2 + 1002 + 2000 + ROW_BYTES
    with pytest.raises(StorageFull):
        enqueue("acct_r", "test", "n", {}, 1, bounds=bounds)
    retry_task(first.id)  # clears both
    assert stored_bytes("acct_r") == 2 + ROW_BYTES
    enqueue("acct_r", "test", "n", {"x": "é"}, 1, bounds=bounds)  # stored as \u00e9
    assert stored_bytes("acct_r") == 2 + ROW_BYTES + len('{"x":"\\u00e9"}') + ROW_BYTES


@pytest.mark.gen_test(timeout=60)
async def test_starts_at_once_cannot_both_pass_a_count(models_db):
    """Sixteen starts of one account at once, each in its own database thread (its own
    connection, as replicas have): exactly as many pass as the bound allows, on SQLite (its
    write lock) and on PostgreSQL (the account's advisory lock around the counts and insert)."""
    storage = Storage(models_db, workers=8)
    try:
        async def starts(account: str, bounds: StartBounds) -> Counter[str]:
            async def one(i: int) -> str:
                try:
                    await storage.run(enqueue, account, "test", "n", {"i": i, "pad": "p" * 500},
                                      1, bounds=bounds)
                except Exception as exc:
                    return type(exc).__name__
                return "started"
            return Counter(await asyncio.gather(*(one(i) for i in range(16))))

        assert await starts("acct_rate", StartBounds(per_minute=5, max_pending=100)) == {
            "started": 5, "StartsThrottled": 11}
        size = len(compact({"i": 10, "pad": "p" * 500})) + ROW_BYTES
        assert await starts("acct_bytes", StartBounds(per_minute=100, max_pending=100,
                                                      stored_bytes=4 * size)) == {
            "started": 4, "StorageFull": 12}
    finally:
        storage.close()


def test_a_stored_error_is_cut(models_db):
    t = time.time()
    Installation.create(account_id="acct_e", mode="test", active=True, installed_at=t,
                        confirmed=True, state_at=1, created_at=t, updated_at=t)
    view = enqueue("acct_e", "test", "n", {}, 1)
    _, (claimed,) = settle_and_claim([], {"n": 1}, 1, "me", 30)
    outcome = Outcome(view.id, claimed.attempts, TaskStatus.FAILED, error="x" * 100_000)
    assert settle_and_claim([outcome], {}, 0, "me", 30)[0] == [True]
    assert len(Task.get_by_id(view.id).error) == MAX_ERROR_CHARS


# ---- credential count on the model -------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_credentials_per_mode_are_bounded_at_once_too(models_db):
    put = put_credential
    put("acct_1", "live", "a", "token", max_count=2)
    put("acct_1", "live", "b", "token", max_count=2)
    with pytest.raises(TooManyCredentials) as refused:
        put("acct_1", "live", "c", "token", max_count=2)
    assert refused.value.count == 2
    put("acct_1", "live", "a", "new", max_count=2)  # a replacement adds no row
    put("acct_1", "test", "c", "token", max_count=2)  # per mode
    put("acct_2", "live", "c", "token", max_count=2)  # per account
    assert Credential.select().where((Credential.account_id == "acct_1")
                                     & (Credential.mode == "live")).count() == 2

    storage = Storage(models_db, workers=8)
    try:
        async def one(i: int) -> bool:
            try:
                await storage.run(put, "acct_3", "live", f"n{i}", "token", max_count=3)
            except TooManyCredentials:
                return False
            return True
        assert Counter(await asyncio.gather(*(one(i) for i in range(12)))) == {True: 3,
                                                                               False: 9}
    finally:
        storage.close()


# ---- the answers -------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_a_large_task_input_answers_413_and_stores_nothing(tmp_path):
    env = base_env(tmp_path, TASK_CONCURRENCY="0", TASK_MAX_PENDING="100")
    async with running(env, registry=registry_of(echo, big)) as app:
        await install(app)
        # the probe's flood: 500 KB fields, from one signed user
        answers = await asyncio.gather(*(app.signed("/api/tasks/echo",
                                                    ident(note="x" * 500_000, n=i))
                                         for i in range(8)))
        assert {r.status_code for r in answers} == {413}
        assert answers[0].json()["error"]["code"] == "input_too_large"
        assert await rows(app) == []
        # 16 KiB by default, as compact JSON; a task may take more
        assert (await app.signed("/api/tasks/echo", ident(note="x" * 16_000))).status_code == 202
        resp = await app.signed("/api/tasks/echo", ident(note="x" * 17_000))
        assert resp.status_code == 413 and "16384" in resp.json()["error"]["message"]
        assert (await app.signed("/api/tasks/big", ident(note="x" * 60_000))).status_code == 202
        assert (await app.signed("/api/tasks/big", ident(note="x" * 70_000))).status_code == 413
        assert len(await rows(app)) == 2


@pytest.fixture
def clock():
    with time_machine.travel(MOMENT, tick=True) as traveller:
        yield traveller


@pytest.mark.gen_test(timeout=180)  # the loop's clock moves with the injected one: +61 s
async def test_starts_per_minute_answer_429_with_retry_after(tmp_path, clock):
    env = base_env(tmp_path, TASK_CONCURRENCY="0", TASK_STARTS_PER_MINUTE="3")
    async with running(env, registry=registry_of(echo)) as app:
        await install(app)
        for i in range(3):
            assert (await app.signed("/api/tasks/echo", ident(n=i))).status_code == 202
        resp = await app.signed("/api/tasks/echo", ident(n=3))
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "too_many_requests"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert len(await rows(app)) == 3
        clock.shift(61)
        assert (await app.signed("/api/tasks/echo", ident(n=4))).status_code == 202


@pytest.mark.gen_test(timeout=60)
async def test_stored_task_bytes_answer_429_quota_exceeded(tmp_path):
    env = base_env(tmp_path, TASK_CONCURRENCY="0", TASK_MAX_STORED_BYTES="65536")
    async with running(env, registry=registry_of(big)) as app:
        await install(app)
        assert (await app.signed("/api/tasks/big", ident(note="x" * 40_000))).status_code == 202
        resp = await app.signed("/api/tasks/big", ident(note="y" * 40_000))
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "quota_exceeded"
        assert resp.headers["Retry-After"] == "3600"
        assert len(await rows(app)) == 1
        assert (await app.signed("/api/tasks/big", ident(note="z" * 100))).status_code == 202


@pytest.mark.gen_test(timeout=60)
async def test_credentials_past_the_count_answer_429_and_are_not_stored(tmp_path):
    env = base_env(tmp_path, CREDENTIALS_KEYS=KEY, SCHEDULER="off", CREDENTIALS_MAX_PER_MODE="2")
    async with running(env) as app:
        for mode in ("live", "test"):
            view, _ = await app.backend.storage.run(apply_state, "acct_1", mode, True,
                                                    int(time.time()), "test")
            app.backend.installations.put(view)

        async def put(name: str, mode: str = "live", value: str = "v"):
            return await app.signed("/api/credentials/set", ident(
                stripe_roles=[ADMIN], mode=mode, name=name, value=value))

        assert (await put("a")).status_code == 200
        assert (await put("b")).status_code == 200
        resp = await put("c")
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "quota_exceeded"
        names = await app.backend.storage.run(
            lambda: sorted((c.mode, c.name) for c in Credential.select()))
        assert names == [("live", "a"), ("live", "b")]
        assert (await put("a", value="new")).status_code == 200  # replacing always works
        assert (await put("c", mode="test")).status_code == 200  # the other mode has room
        resp = await app.signed("/api/credentials/delete", ident(
            stripe_roles=[ADMIN], mode="live", name="a"))
        assert resp.json()["deleted"] is True
        assert (await put("c")).status_code == 200


# ---- single-use signatures ---------------------------------------------------------------------

def replayed(resp) -> bool:
    return resp.status_code == 401 and resp.json()["error"]["code"] == "signature_replayed"


@pytest.mark.gen_test(timeout=90)
async def test_a_signature_starts_one_task_on_any_replica(tmp_path, db_url):
    env = base_env(tmp_path, DATABASE_URL=db_url, TASK_CONCURRENCY="0")
    registry = registry_of(echo)
    async with running(env, registry=registry) as one, running(env, registry=registry) as two:
        await install(one)
        await two.backend.installations.refresh()
        raw = compact(ident(note="once"))
        header = sign(raw, APP_SECRET)
        assert (await one.signed("/api/tasks/echo", raw, header=header)).status_code == 202
        assert replayed(await one.signed("/api/tasks/echo", raw, header=header))
        assert replayed(await two.signed("/api/tasks/echo", raw, header=header))
        # the same signature in another header: reordered, with an extra v1 or a v0
        t, v1 = header.split(",")
        for other in (f"{v1},{t}", f"{header},v1={'0' * 64}", f"{header},v0={'1' * 64}"):
            assert replayed(await two.signed("/api/tasks/echo", raw, header=other)), other
        # on another endpoint that takes each signature once
        assert replayed(await two.signed("/api/credentials/list", raw, header=header))
        assert len(await rows(one)) == 1
        # one new signature sent to both replicas at once: one start
        raw = compact(ident(note="race"))
        header = sign(raw, APP_SECRET)
        answers = await asyncio.gather(one.signed("/api/tasks/echo", raw, header=header),
                                       two.signed("/api/tasks/echo", raw, header=header))
        assert sorted(r.status_code for r in answers) == [202, 401]
        assert len(await rows(one)) == 2
        # the two-key fallback signs no payload: one start per signature all the same
        header = sign(compact(ident()), APP_SECRET)
        assert (await one.signed("/api/tasks/echo", compact(ident(x=1)), header=header)
                ).status_code == 202
        assert replayed(await two.signed("/api/tasks/echo", compact(ident(x=2)), header=header))
        used = await one.backend.storage.run(lambda: UsedSignature.select().count())
        assert used == 3


@pytest.mark.gen_test(timeout=60)
async def test_a_replayed_credential_change_changes_nothing(tmp_path):
    env = base_env(tmp_path, CREDENTIALS_KEYS=KEY, SCHEDULER="off")
    async with running(env) as app:
        view, _ = await app.backend.storage.run(apply_state, "acct_1", "live", True,
                                                int(time.time()), "test")
        app.backend.installations.put(view)
        first = compact(ident(stripe_roles=[ADMIN], mode="live", name="k", value="one"))
        header = sign(first, APP_SECRET)
        assert (await app.signed("/api/credentials/set", first, header=header)).status_code == 200
        assert (await app.signed("/api/credentials/set", ident(
            stripe_roles=[ADMIN], mode="live", name="k", value="two"))).status_code == 200
        assert replayed(await app.signed("/api/credentials/set", first, header=header))
        assert await app.backend.vault.get("acct_1", "live", "k") == "two"
        delete = compact(ident(stripe_roles=[ADMIN], mode="live", name="k"))
        header = sign(delete, APP_SECRET)
        assert (await app.signed("/api/credentials/delete", delete, header=header)).json()[
            "deleted"] is True
        assert (await app.signed("/api/credentials/set", ident(
            stripe_roles=[ADMIN], mode="live", name="k", value="three"))).status_code == 200
        assert replayed(await app.signed("/api/credentials/delete", delete, header=header))
        assert await app.backend.vault.get("acct_1", "live", "k") == "three"
        listing = compact(ident())
        header = sign(listing, APP_SECRET)
        assert (await app.signed("/api/credentials/list", listing, header=header)
                ).status_code == 200
        assert replayed(await app.signed("/api/credentials/list", listing, header=header))


@pytest.mark.gen_test(timeout=60)
async def test_reads_accept_a_signature_again(tmp_path):
    env = base_env(tmp_path, TASK_CONCURRENCY="0")
    async with running(env, registry=registry_of(echo)) as app:
        await install(app)
        task_id = (await app.signed("/api/tasks/echo", ident())).json()["task_id"]
        for path, body in (("/api/installation", ident()), ("/api/whoami", ident()),
                           ("/api/jobs", ident()), ("/api/tasks/status", ident(task_id=task_id)),
                           ("/api/customers/summary", ident()), ("/api/balance", ident())):
            raw = compact(body)
            header = sign(raw, APP_SECRET)
            for _ in range(3):
                resp = await app.signed(path, raw, header=header)
                assert resp.status_code == 200, (path, resp.text)
        assert await app.backend.storage.run(lambda: UsedSignature.select().count()) == 1


def test_a_lean_handler_cannot_take_single_use_signatures():
    with pytest.raises(TypeError, match="lean"):
        class Both(SignedHandler):  # noqa: F841 (the class statement is what fails)
            lean = True
            single_use_signature = True
