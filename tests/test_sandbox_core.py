"""Issue 26 at the core: the sandbox mode's schema (migration 016, on SQLite and a real
PostgreSQL), its hourly reconciliation schedule, and the rule for an event's context."""

from __future__ import annotations

import shutil
from pathlib import Path

import peewee as pw
import pytest

from jobs.installs import HOUR, daily_fire, next_fire
from models.context import account_context, event_context
from models.db import open_database
from models.enums import MODES, Mode
from models.events import WebhookEvent, store_event
from models.migrate import MIGRATIONS_DIR, migrate

SANDBOX_MIGRATION = "016_sandboxes_and_organizations"
SANDBOX_ROW = ("INSERT INTO installation (account_id, mode, active, confirmed, state_at, "
               "state_seq, jobs_paused, created_at, updated_at, approval_required, details_at) "
               "VALUES ('acct_1', 'sandbox', true, true, 0, 0, false, 0, 0, false, 0)")


def test_the_modes_and_how_an_event_gets_one():
    assert MODES == (Mode.LIVE, Mode.TEST, Mode.SANDBOX)
    assert Mode.of_livemode(True) is Mode.LIVE and Mode.of_livemode(False) is Mode.TEST
    # The managed sandbox's secret or key decides, whatever the body's flag says.
    assert Mode.of_livemode(False, sandbox=True) is Mode.SANDBOX
    assert Mode.of_livemode(True, sandbox=True) is Mode.SANDBOX
    assert not Mode.SANDBOX.livemode


def test_sandbox_installs_are_reconciled_hourly_at_a_stable_minute():
    at = 1_800_000_123.0  # an injected clock, not today's
    fire = next_fire("com.example.app", Mode.SANDBOX, at)
    assert at < fire <= at + HOUR
    # the same minute of every hour, on every replica, and the hour after once it has passed
    assert next_fire("com.example.app", Mode.SANDBOX, fire) == fire + HOUR
    assert next_fire("com.example.app", Mode.SANDBOX, fire - 1) == fire
    assert (fire - next_fire("com.example.app", Mode.SANDBOX, at + 5 * HOUR)) % HOUR == 0
    for mode in (Mode.LIVE, Mode.TEST):
        assert next_fire("com.example.app", mode, at) == daily_fire("com.example.app", at)


@pytest.mark.parametrize("raw, stored", [
    ("org_1AbC", "org_1AbC"),
    ("acct_1/acct_2", "acct_1/acct_2"),
    ("org_9/acct_1/acct_2", "org_9/acct_1/acct_2"),
    ("x y", None), ("", None), (42, None), (None, None), (["org_1"], None),
    ("org_1/org_2", None), ("acct_1/", None), ("org_" + "a" * 300, None),
    ("acct_1\nStripe-Account: acct_2", None),  # no header smuggling through a context
])
def test_only_a_well_formed_context_is_kept(raw, stored):
    assert event_context(raw) == stored


@pytest.mark.parametrize("context, applies, value", [
    ("acct_1", True, None),                  # the account itself: Stripe-Account, as before
    ("org_9", True, "org_9"),                # an organization's context
    ("org_9/acct_1", True, "org_9/acct_1"),  # a path ending at the account
    ("acct_p/acct_1", True, "acct_p/acct_1"),
    ("acct_2", False, None),                 # another account: never applied
    ("org_9/acct_2", False, None),
])
def test_an_events_context_never_points_an_installation_at_another_account(context, applies,
                                                                          value):
    assert tuple(account_context(context, "acct_1")) == (applies, value)


def test_migration_016_widens_the_modes_and_keeps_old_rows(db_url, tmp_path):
    """A database of the previous version (up to 015) with rows in it: after 016 a sandbox row
    fits every mode column (PostgreSQL enforces the width), old events read as the mode of
    their `livemode`, and an insert by a replica of the previous version (which names neither
    new column) still works and reads as live or test."""
    old = tmp_path / "previous"
    later = [p.name for p in sorted(Path(MIGRATIONS_DIR).glob("[0-9]*.py"))
             if p.stem >= SANDBOX_MIGRATION]
    shutil.copytree(MIGRATIONS_DIR, old, ignore=shutil.ignore_patterns("__pycache__", *later))
    db = open_database(db_url)
    try:
        assert SANDBOX_MIGRATION not in migrate(db, str(old))
        db.execute_sql("INSERT INTO webhook_event (id, type, account_id, livemode, created, "
                       "payload, received_at, status, attempts) VALUES ('evt_old', 't', "
                       "'acct_1', true, 1, '{}', 1, 'processed', 0)")
        if db_url.startswith("postgresql"):  # SQLite ignores the width
            with pytest.raises(pw.DataError), db.atomic():
                db.execute_sql(SANDBOX_ROW)
        assert migrate(db)[0] == SANDBOX_MIGRATION
        for table in ("installation", "job_run", "task", "credential"):
            column = {c.name: c for c in db.get_columns(table)}["mode"]
            assert column.data_type.lower().startswith(("varchar", "character varying"))
        if db_url.startswith("postgresql"):
            # replicas of the previous version, during a rolling upgrade, name neither new
            # column (SQLite serves one host, whose processes upgrade together)
            db.execute_sql(SANDBOX_ROW)
            db.execute_sql("INSERT INTO webhook_event (id, type, account_id, livemode, "
                           "created, payload, received_at, status, attempts) VALUES "
                           "('evt_prev', 't', 'acct_1', false, 1, '{}', 1, 'processed', 0)")
            assert WebhookEvent.get_by_id("evt_prev").mode is Mode.TEST
        else:
            db.execute_sql(SANDBOX_ROW.replace("details_at)", "details_at, context_at)")
                           .replace("0, false, 0)", "0, false, 0, 0)"))
        assert WebhookEvent.get_by_id("evt_old").mode is Mode.LIVE
        assert store_event("evt_sbx", "t", "acct_1", False, 2, "{}", False, Mode.SANDBOX,
                           "org_9")
        row = WebhookEvent.get_by_id("evt_sbx")
        assert (row.mode, row.context, row.livemode) == (Mode.SANDBOX, "org_9", False)
        installs = db.execute_sql("SELECT mode, context, context_at FROM installation "
                                  "WHERE account_id = 'acct_1'").fetchall()
        assert list(installs) == [("sandbox", None, 0)]
    finally:
        db.close()
