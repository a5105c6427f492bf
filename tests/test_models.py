"""Model behaviour, the same tests on SQLite and on PostgreSQL (issue 2)."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
from conftest import APP_SECRET, SAMPLE_PACKAGES
from sample_app.balance_snapshot import BalanceSnapshot

import models
from models.backoff import Jitter, backoff_delay
from models.base import AccountModel, discover_models
from models.db import Storage, open_database, write_transaction
from models.enums import EventStatus, JobOutcome, Mode
from models.events import (
    MAX_ATTEMPTS,
    WebhookEvent,
    claim_event,
    due_event_ids,
    finish_event,
    retry_delay,
    store_event,
)
from models.install_state import InstallState, use_state
from models.installation import Installation, apply_state, set_paused
from models.jobs import JobRun, claim_run
from models.migrate import migrate, pending
from service.state_token import STATE_TTL, StateTokens


@pytest.fixture
def db(db_url):
    database = open_database(db_url)
    migrate(database)
    yield database
    database.close()


def test_migrations_bring_a_fresh_database_up_to_date(db):
    assert pending(db) == []
    assert {"installation", "webhook_event", "job_run", "install_state",
            "balance_snapshot"} <= set(db.get_tables())
    assert migrate(db) == []  # idempotent


def test_lifecycle_ordering_late_older_event_does_not_undo_newer(db):
    view, applied = apply_state("acct_1", "live", False, at=200, source="evt_deauth")
    assert applied and not view.active
    view, applied = apply_state("acct_1", "live", True, at=100, source="evt_auth_old")
    assert not applied and not view.active
    view, applied = apply_state("acct_1", "live", True, at=300, source="evt_auth_new",
                                confirm=True)
    assert applied and view.active and view.confirmed
    assert Installation.select().count() == 1


def test_same_second_later_arrival_wins(db):
    apply_state("acct_1", "test", True, at=100, source="a", arrived=1.0)
    view, applied = apply_state("acct_1", "test", False, at=100, source="b", arrived=2.0)
    assert applied and not view.active
    # a retry of the earlier arrival does not undo it
    view, applied = apply_state("acct_1", "test", True, at=100, source="a", arrived=1.0)
    assert not applied and not view.active


def test_modes_are_independent(db):
    apply_state("acct_1", "live", True, at=100, source="x")
    apply_state("acct_1", "test", True, at=100, source="y")
    apply_state("acct_1", "test", False, at=101, source="z")
    rows = {r.mode: r.active for r in Installation.select()}
    assert rows == {"live": True, "test": False}


def test_reinstall_keeps_one_record_and_history(db):
    apply_state("acct_1", "live", True, at=100, source="a", user_id="usr_1")
    apply_state("acct_1", "live", False, at=200, source="b")
    view, _ = apply_state("acct_1", "live", True, at=300, source="c", user_id="usr_2")
    row = Installation.get()
    assert Installation.select().count() == 1
    assert row.active and row.installed_by == "usr_2" and row.uninstalled_at is not None
    assert view.since == int(row.installed_at)


def test_pause_and_resume(db):
    apply_state("acct_1", "live", True, at=100, source="a")
    assert set_paused("acct_1", "live", True, "revoked").jobs_paused
    assert claim_run("job", "acct_1", "live", 1, "r") is None  # paused: not claimed
    assert not set_paused("acct_1", "live", False).jobs_paused
    assert set_paused("acct_nope", "live", True) is None


def test_event_store_is_idempotent_under_concurrency(db_url, db):
    storage = Storage(db, workers=8)
    results = []
    barrier = threading.Barrier(8)

    def deliver():
        barrier.wait()
        results.append(storage._call(store_event, ("evt_same", "t", "acct_1", True, 1, "{}"),
                                     {}))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storage.close()
    assert sorted(results) == [False] * 7 + [True]
    assert WebhookEvent.select().count() == 1


def test_event_claim_retry_and_dead_letter(db):
    assert store_event("evt_1", "x.y", None, False, 1, "{}")
    first = claim_event("evt_1")
    assert first is not None and first.attempts == 1
    assert claim_event("evt_1") is None  # held
    assert finish_event("evt_1", "boom", first.attempts) == "failed"
    row = WebhookEvent.get_by_id("evt_1")
    assert row.last_error == "boom" and row.next_attempt_at > time.time()
    assert claim_event("evt_1") is None  # not due yet
    forced = claim_event("evt_1", force=True)
    assert forced is not None and forced.attempts == 2
    assert finish_event("evt_1", None, forced.attempts) == "processed"
    assert WebhookEvent.get_by_id("evt_1").status == "processed"
    assert finish_event("evt_1", "x", 99) == "dead"



def test_the_poll_lists_exactly_the_events_a_claim_would_take(db):
    for event_id in ("evt_due", "evt_later", "evt_held", "evt_stale", "evt_done"):
        store_event(event_id, "x.y", None, False, 1, "{}")
    WebhookEvent.update(status="failed", next_attempt_at=time.time() + 600).where(
        WebhookEvent.id == "evt_later").execute()
    for event_id in ("evt_held", "evt_stale", "evt_done"):
        assert claim_event(event_id) is not None
    WebhookEvent.update(locked_until=time.time() - 1).where(
        WebhookEvent.id == "evt_stale").execute()
    finish_event("evt_done", None, 1)
    listed = set(due_event_ids())
    assert listed == {"evt_due", "evt_stale"}
    taken = {e for e in ("evt_due", "evt_later", "evt_held", "evt_stale", "evt_done")
             if claim_event(e) is not None}
    assert taken == listed

def test_job_claim_is_unique_and_needs_active_installation(db):
    assert claim_run("snap", "acct_1", "live", 1000, "r1") is None  # not installed
    apply_state("acct_1", "live", True, at=1, source="a")
    first = claim_run("snap", "acct_1", "live", 1000, "r1")
    assert first is not None
    assert claim_run("snap", "acct_1", "live", 1000, "r2") is None
    assert claim_run("snap", "acct_1", "live", 1060, "r2") is not None
    assert claim_run("snap", "acct_1", "test", 1000, "r2") is None  # other mode not installed
    assert JobRun.select().count() == 2


def test_install_state_single_use_expiry_and_browser(db):
    """The state is a signed token (checked without the database); its single use is a row."""
    tokens = StateTokens([APP_SECRET])
    state = tokens.issue("browser-a")
    assert tokens.check(state, "browser-b").reason == "state belongs to another browser"
    assert tokens.check(state, None).reason == "state belongs to another browser"
    assert tokens.check("nope" * 5, "browser-a").reason == "malformed state"
    forged = StateTokens(["absec_other" + "x" * 20]).issue("browser-a")
    assert tokens.check(forged, "browser-a").reason == "state not issued by this server"
    checked = tokens.check(state, "browser-a")
    assert checked.reason is None
    assert InstallState.select().count() == 0  # issuing and checking wrote nothing
    with write_transaction(db):
        assert use_state(checked.nonce, checked.expires_at, "acct_1")
    with write_transaction(db):
        assert not use_state(checked.nonce, checked.expires_at, "acct_1")
        assert InstallState.select().count() == 1  # the transaction lives on after a refusal
    expired = tokens.issue("browser-a", now=time.time() - STATE_TTL - 1)
    assert tokens.check(expired, "browser-a").reason == "state expired"
    # rotation: a state signed with the old first secret still verifies while it is listed
    rotated = StateTokens(["absec_new" + "n" * 24, APP_SECRET])
    assert rotated.check(state, "browser-a").reason is None


def test_uninstall_deletes_only_that_accounts_data_in_that_mode(db):
    for account, mode in [("acct_1", "live"), ("acct_1", "test"), ("acct_2", "live")]:
        BalanceSnapshot.create(account_id=account, mode=mode, available="[]", pending="[]")
    assert AccountModel.delete_account_data("acct_1", "live") == 1
    left = {(r.account_id, r.mode) for r in BalanceSnapshot.select()}
    assert left == {("acct_1", "test"), ("acct_2", "live")}


def test_states_and_modes_are_their_strings_in_the_database_and_in_json(db):
    assert Mode.of_livemode(True) is Mode.LIVE and Mode.of_livemode(False) is Mode.TEST
    assert Mode.LIVE == "live" and {"test": 1}[Mode.TEST] == 1
    view, _ = apply_state("acct_1", Mode.LIVE, True, at=1, source="a")
    assert view.mode is Mode.LIVE and view.mode.livemode
    assert apply_state("acct_1", "live", False, at=2, source="b")[0].mode is Mode.LIVE
    store_event("evt_1", "x.y", None, False, 1, "{}")
    row = WebhookEvent.get_by_id("evt_1")
    assert row.status == EventStatus.PENDING and row.mode is Mode.TEST
    run_id = claim_run("snap", "acct_1", "live", 1, "r")
    assert run_id is None  # uninstalled above
    apply_state("acct_1", "live", True, at=3, source="c")
    run = JobRun.get_by_id(claim_run("snap", "acct_1", "live", 1, "r"))
    assert type(run.outcome) is str and run.outcome == JobOutcome.RUNNING
    assert json.dumps({"mode": Mode.TEST, "outcome": JobOutcome.NOT_CLAIMED}) == (
        '{"mode": "test", "outcome": "not_claimed"}')


def lowest(a: float, b: float) -> float:
    return a


def highest(a: float, b: float) -> float:
    return b


def test_backoff_is_capped_exponential_with_the_stated_jitter():
    assert [backoff_delay(n, first=0.5, jitter=Jitter.FULL, uniform=highest)
            for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(3, first=0.5, jitter=Jitter.FULL, uniform=lowest) == 0.0
    assert backoff_delay(10, first=0.5, cap=30.0, jitter=Jitter.FULL, uniform=highest) == 30.0
    assert backoff_delay(2, first=5.0, jitter=Jitter.EQUAL, uniform=lowest) == 10.0
    assert backoff_delay(2, first=5.0, jitter=Jitter.EQUAL, uniform=highest) == 20.0
    assert backoff_delay(5000, first=1.0, cap=60.0, jitter=Jitter.EQUAL, uniform=highest) == 60.0
    for _ in range(200):
        assert 0.0 <= backoff_delay(3, first=1.0, jitter=Jitter.FULL) <= 8.0
        assert 4.0 <= backoff_delay(3, first=1.0, jitter=Jitter.EQUAL) <= 8.0


def test_event_retries_span_hours_before_the_event_is_dead():
    waits = range(1, MAX_ATTEMPTS)  # a wait follows every failed attempt but the last
    assert retry_delay(1, uniform=lowest) == 1.0 and retry_delay(1, uniform=highest) == 2.0
    assert retry_delay(MAX_ATTEMPTS - 1, uniform=highest) == 3600.0
    shortest = sum(retry_delay(n, uniform=lowest) for n in waits)
    longest = sum(retry_delay(n, uniform=highest) for n in waits)
    assert 2.5 * 3600 < shortest and longest < 5.2 * 3600


UNIMPORTED_MODULE = """
import peewee as pw

from models.base import AccountModel


class ScratchNote(AccountModel):
    text = pw.TextField()
"""


def test_a_model_in_a_module_nothing_imports_is_found_and_cleaned_up_on_uninstall(
        db, tmp_path, monkeypatch):
    folder = tmp_path / "more_models"
    folder.mkdir()
    (folder / "scratch_notes.py").write_text(UNIMPORTED_MODULE)
    assert "models.scratch_notes" not in sys.modules
    try:
        with monkeypatch.context() as patch:
            # the folder becomes part of the `models` package, as a new file in models/ would
            before = {model.__name__ for model in discover_models(SAMPLE_PACKAGES)}
            patch.setattr(models, "__path__", [*models.__path__, str(folder)])
            found = {model.__name__: model for model in discover_models(SAMPLE_PACKAGES)}
            assert set(found) - before == {"ScratchNote"}
            assert {"Installation", "InstallState", "WebhookEvent", "JobRun",
                    "BalanceSnapshot"} <= before
            assert not {"BaseModel", "AccountModel"} & set(found)  # no abstract bases
            note = found["ScratchNote"]
            db.create_tables([note])
            for mode in ("live", "test"):
                note.create(account_id="acct_1", mode=mode, text="x")
                BalanceSnapshot.create(account_id="acct_1", mode=mode, available="[]",
                                       pending="[]")
            assert AccountModel.delete_account_data("acct_1", "live") == 2
            assert [r.mode for r in note.select()] == ["test"]
            db.drop_tables([note])
    finally:
        sys.modules.pop("models.scratch_notes", None)
    assert "ScratchNote" not in {model.__name__ for model in discover_models(SAMPLE_PACKAGES)}


def test_a_replica_of_the_previous_version_can_still_insert_on_postgresql(pg_url):
    """During a rolling upgrade, replicas still on the previous version write rows without the
    columns later migrations added; the database fills them (migration 010)."""
    db = open_database(pg_url)
    migrate(db)
    db.execute_sql(
        "INSERT INTO installation (account_id, mode, active, confirmed, state_at, state_seq, "
        "jobs_paused, created_at, updated_at) VALUES ('acct_old', 'live', true, false, 1, 0, "
        "false, 1, 1)")
    db.execute_sql(
        "INSERT INTO job_run (job, account_id, mode, fire_time, outcome, attempt) "
        "VALUES ('j', 'acct_old', 'live', 100, 'running', 0)")
    row = db.execute_sql("SELECT i.approval_required, i.details_at, r.kind, r.seq FROM "
                         "installation i JOIN job_run r ON r.account_id = i.account_id").fetchone()
    assert row == (False, 0, "fire", 0)
    db.close()
