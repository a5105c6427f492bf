"""One orchestrator (issue 22, item 3): start-up is one ordered list of steps that the server,
the CLI and the tests share, shutdown undoes the steps that ran in reverse (also when a later
step fails), a command runs a prefix, and the database is opened one way, with
`SQLITE_SYNCHRONOUS`, by every command. Real SQLite files, a real port."""

from __future__ import annotations

import argparse
import pathlib
import socket

import pytest
from conftest import ROOT, base_env
from cryptography.fernet import Fernet

from cli.main import build_parser
from models import db as models_db
from models.db import open_database
from models.migrate import migrate
from service.config import Config
from service.services import OFFLINE, Services, StartupError, Step

ALL_STEPS = ["database", "installations", "integrations", "jobs", "scheduler", "replica",
             "background", "app", "http"]


class Recording(Services):
    """The real steps, with each undoing written down as it happens."""

    undone: list[str]

    def steps(self) -> tuple[Step, ...]:
        self.undone = getattr(self, "undone", [])
        return tuple(Step(s.name, s.start, None if s.close is None else self._noted(s))
                     for s in super().steps())

    def _noted(self, step: Step):  # type: ignore[no-untyped-def]
        async def close(timeout: float) -> None:
            self.undone.append(step.name)
            assert step.close is not None
            await step.close(timeout)
        return close


def test_the_steps_are_one_ordered_list(tmp_path):
    services = Services(Config.from_env(base_env(tmp_path)))
    assert [s.name for s in services.steps()] == ALL_STEPS
    assert OFFLINE == "jobs"  # the commands' prefix: nothing scheduled, nothing served


@pytest.mark.gen_test(timeout=30)
async def test_every_step_runs_and_stop_undoes_them_in_reverse(tmp_path):
    backend = Recording(Config.from_env(base_env(tmp_path, SHUTDOWN_TIMEOUT="1")))
    await backend.start()
    assert backend.port and backend.scheduler is not None and backend.app is not None
    background = list(backend._background)
    await backend.stop()
    assert backend.undone == ["http", "background", "scheduler", "jobs", "integrations",
                              "database"]
    assert all(t.done() for t in background) and backend.http.is_closed
    await backend.stop()  # again: nothing left to undo
    assert len(backend.undone) == 6


@pytest.mark.gen_test(timeout=30)
async def test_a_failing_step_undoes_the_ones_that_ran_in_reverse(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        backend = Recording(Config.from_env(base_env(tmp_path, PORT=str(port))))
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await backend.start()
    # http failed: what ran before it is undone, last first, and really closed
    assert backend.undone == ["background", "scheduler", "jobs", "integrations", "database"]
    assert all(t.done() for t in backend._background) and backend.http.is_closed
    assert backend.scheduler is not None and not backend.scheduler.state()["running"]
    with pytest.raises(RuntimeError):  # the database's threads are gone
        await backend.storage.run(lambda: 1)
    await backend.stop()
    assert len(backend.undone) == 5


@pytest.mark.gen_test(timeout=30)
async def test_a_command_runs_a_prefix(tmp_path):
    config = Config.from_env(base_env(tmp_path))
    async with Recording.opened(config, until=OFFLINE, replica="cli") as services:
        assert services.runner.replica == "cli" and services.tools.replica == "cli"
        assert services.scheduler is None and services.port is None
        assert not hasattr(services, "app")
    assert services.undone == ["jobs", "integrations", "database"]
    with pytest.raises(ValueError, match="no start-up step 'nope'"):
        await Services(config).start("nope")


# ---- one way to open the database ------------------------------------------------------------

COMMANDS = [["migrate"], ["tasks", "list"], ["credentials", "rotate"],
            ["doctor", "--no-probe"], ["jobs", "list"], ["events", "list"], ["prune"]]


def _synchronous_of_last_opened() -> int:
    """SQLite's `synchronous` on a new connection of the database the models were last
    connected to (1 normal, 2 full)."""
    db = models_db.database.obj
    db.connect(reuse_if_open=True)
    try:
        return int(db.execute_sql("PRAGMA synchronous").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_opens_the_database_with_sqlite_synchronous(tmp_path, argv, capsys):
    url = f"sqlite:///{tmp_path}/cmd.db"
    migrate(open_database(url))
    config = Config.from_env({"DATABASE_URL": url, "SQLITE_SYNCHRONOUS": "full",
                              "CREDENTIALS_KEYS": Fernet.generate_key().decode()})
    before = open_database(url, "normal")  # the models point here until the command opens
    args: argparse.Namespace = build_parser().parse_args(argv)
    code = args.func(config, args)
    assert code in (0, 1), capsys.readouterr()  # doctor fails checks: no keys, no app id
    assert models_db.database.obj is not before, "the command did not open the database"
    assert _synchronous_of_last_opened() == 2  # FULL, as configured


def test_only_one_function_opens_the_database():
    """Product code reaches `models.db.open_database` only through
    `service.services.open_configured_database` (so `SQLITE_SYNCHRONOUS` always applies)."""
    root, calls = pathlib.Path(ROOT), []
    for folder in ("cli", "service", "jobs"):
        for path in sorted((root / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "open_database(" in line.replace("open_configured_database(", ""):
                    calls.append(f"{path.relative_to(root)}:{n}")
    assert len(calls) == 1 and calls[0].startswith("service/services.py:"), calls
