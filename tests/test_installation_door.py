"""The one door for installation changes (issue 22, item 2): `InstallationIndex.apply` runs the
rule of `models/installation.py` and tells the index and its listeners. The rule is tested once,
here, as a table of (before, change, after), against a real SQLite file: the row, whether the
change took effect, whether the account's app data survived, and what the index (and so the
scheduler and the task worker, which listen to it) were told."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sample_app.balance_snapshot import BalanceSnapshot

from models.db import Storage, open_database
from models.installation import Change, Installation, InstallChange, change_installation
from models.installation_index import InstallationIndex
from models.migrate import migrate

ACCT, MODE = "acct_door", "live"
IN, U, L, P, C = (Change.INSTALLED, Change.UNINSTALLED, Change.LINK, Change.PENDING,
                  Change.CONTRADICTED)


def _seed(before: str) -> None:
    """Make the row `before` names (every change at `at` 100), and one app-data row."""
    steps = {"none": [], "uninstalled": [(U, 100)], "installed": [(IN, 100)],
             "provisional": [(L, 100)], "pending": [(U, 100), (P, 150)]}[before]
    for kind, at in steps:
        change_installation(InstallChange(ACCT, MODE, kind, at, f"seed-{kind}", arrived=1.0))
    BalanceSnapshot.create(account_id=ACCT, mode=MODE, available="[]", pending="[]")


@dataclass(frozen=True)
class After:
    active: bool
    confirmed: bool = False
    pending: bool = False
    applied: bool = True

    @property
    def state(self) -> tuple[bool, bool, bool]:
        return self.active, self.confirmed, self.pending


OFF = After(False)
# (before, change kind, change `at`, after). A change arrives after the seed (arrived=2.0), so on
# a tie of `at` it is the newer one.
TABLE = [
    ("none", IN, 200, After(True, True)),
    ("none", L, 200, After(True, False)),  # an install link: at once, mode provisional
    ("none", P, 200, After(False, pending=True)),  # a Marketplace callback: nothing yet
    ("none", U, 200, OFF),
    ("none", C, 200, After(False, applied=False)),
    # an uninstall is never undone by anything older than it
    ("uninstalled", L, 50, After(False, applied=False)),
    ("uninstalled", IN, 50, After(False, applied=False)),  # an older Install API answer
    ("uninstalled", P, 50, After(False, applied=False)),
    ("uninstalled", L, 200, After(True, False)),
    ("uninstalled", IN, 100, After(True, True)),  # a tie: the later arrival wins
    ("uninstalled", U, 200, OFF),  # already inactive: its leftover data is not touched
    ("installed", U, 200, OFF),  # the install ends: its data goes
    ("installed", U, 50, After(True, True, applied=False)),
    ("installed", L, 200, After(True, True)),  # a link never unconfirms
    ("installed", P, 200, After(True, True, applied=False)),
    ("installed", C, 200, After(True, True, applied=False)),  # only a provisional row
    ("provisional", IN, 50, After(True, True, applied=False)),  # a late confirmation
    ("provisional", IN, 200, After(True, True)),
    ("provisional", C, 50, OFF),  # contradicted, whatever its date: undone, data gone
    ("provisional", U, 200, OFF),
    ("provisional", U, 50, After(True, False, applied=False)),
    ("pending", IN, 200, After(True, True)),  # Stripe confirms: it takes effect
    ("pending", IN, 50, After(False, pending=True, applied=False)),  # older than the uninstall
    ("pending", C, 200, OFF),  # Stripe has it in the other mode: it stops waiting
    ("pending", U, 200, OFF),  # an uninstall ends the wait
    ("pending", L, 200, After(True, False)),
]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("before,kind,at,after", TABLE,
                         ids=[f"{b}-{k}@{a}" for b, k, a, _ in TABLE])
async def test_the_rule(tmp_path, before, kind, at, after):
    db = open_database(f"sqlite:///{tmp_path}/door.db")
    migrate(db)
    _seed(before)
    was_active = bool(Installation.get_or_none(account_id=ACCT, mode=MODE)
                      and Installation.get(account_id=ACCT, mode=MODE).active)
    storage = Storage(db, workers=1)
    door = InstallationIndex(storage)
    await door.load()
    told = []
    door.subscribe(lambda old, new: told.append((old and old.active, new.active)))
    try:
        out = await door.apply(InstallChange(ACCT, MODE, kind, at, "the-change", arrived=2.0,
                                             user_id="usr_x"))
        row = await storage.run(Installation.get, (Installation.account_id == ACCT)
                                & (Installation.mode == MODE))
        assert (row.active, row.confirmed, row.pending_at is not None) == after.state
        assert (out.view.active, out.view.confirmed, out.view.pending) == after.state
        assert out.applied is after.applied
        assert out.flipped is (was_active != after.active)
        ends = was_active and not after.active
        data = await storage.run(BalanceSnapshot.select().count)
        assert (data, out.deleted) == ((0, 1) if ends else (1, 0))
        # the index and its listeners (the scheduler, the task worker) heard of it
        assert door.is_active(ACCT, MODE) is after.active
        assert door.get(ACCT, MODE) == out.view
        if was_active != after.active:
            assert told[-1] == (was_active if before != "none" else None, after.active)
        elif before != "none":
            assert told == []
    finally:
        storage.close()
        db.close()
