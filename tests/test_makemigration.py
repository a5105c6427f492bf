"""`run.py makemigration` / `make_migration`: no change gives no file; a model change gives a
migration with that change only, which applies, and the app then starts on the database.

The models changed are the app's (the tests' sample app, whose tables are `BalanceSnapshot` and
`CustomerSummary`, as the example app's): its migrations go to its own folder, with its own
history, after the project's (models/migrate.py). Each test runs on a real SQLite file in
tmp_path and on a fresh PostgreSQL database (`db_url`), except the command-line one (SQLite
only). Generated files go to a copy of the app's `migrations/` folder; the command-line test
checks that the project's folder and the app's are left as they were.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import peewee as pw
import pytest
from sample_app.balance_snapshot import BalanceSnapshot as RealSnapshot

from cli.devtools import free_port
from models.base import AccountModel
from models.db import open_database
from models.migrate import MIGRATIONS_DIR, AppSchema, app_schema, make_migration, migrate
from tests.conftest import ROOT, SAMPLE_APP, base_env, start_server

APP = "sample_app"


def _migration_files(folder: str) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith(".py") and n[:3].isdigit()}


@pytest.fixture
def copy_dir(tmp_path: Path) -> str:
    """A copy of the sample app's migrations folder."""
    folder = tmp_path / "migrations"
    shutil.copytree(app_schema(SAMPLE_APP).migrate_dir, folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(folder)


@pytest.fixture
def app(copy_dir: str) -> AppSchema:
    """The sample app, its migrations in the copy."""
    return dataclasses.replace(app_schema(SAMPLE_APP), migrate_dir=copy_dir)


def _up_to_date(url: str, app: AppSchema) -> pw.Database:
    db = open_database(url)
    assert migrate(db, apps=[app])[-1] == (
        f"{APP}/" + sorted(_migration_files(app.migrate_dir))[-1][:-3])
    return db


def _with(replacement: type[pw.Model]) -> list[type[pw.Model]]:
    """Every model of the app, with `replacement` in place of the real BalanceSnapshot."""
    own = app_schema(SAMPLE_APP).models
    models: list[type[pw.Model]] = [m for m in own if m is not RealSnapshot]
    assert len(models) == len(own) - 1
    return [*models, replacement]


def _body(folder: str, name: str) -> str:
    """The statements of the generated migrate() (the part before rollback)."""
    text = Path(folder, name + ".py").read_text()
    start = text.index("def migrate(")
    body = text[text.index("\n", start):text.index("def rollback(")]
    return "\n".join(line.strip() for line in body.splitlines()
                     if line.strip() and not line.strip().startswith('"""'))


def test_no_model_change_writes_nothing(db_url: str, app: AppSchema, tmp_path: Path) -> None:
    db = _up_to_date(db_url, app)
    before = _migration_files(app.migrate_dir)
    assert make_migration(db, "noop", app=app) is None
    assert _migration_files(app.migrate_dir) == before
    # nor for the project's own models, against the project's files (a copy of them)
    project = shutil.copytree(MIGRATIONS_DIR, tmp_path / "project",
                              ignore=shutil.ignore_patterns("__pycache__"))
    assert make_migration(db, "noop", migrate_dir=str(project)) is None
    assert _migration_files(str(project)) == _migration_files(MIGRATIONS_DIR)


@pytest.mark.parametrize("named", [True, False], ids=["app", "project"])
def test_cli_on_an_up_to_date_database(tmp_path: Path, named: bool) -> None:
    """With an app named, `makemigration` compares the app's models with the app's migrations;
    with none, the project's with the project's."""
    env = {**os.environ, **base_env(tmp_path), "APP_PACKAGES": SAMPLE_APP if named else ""}
    folders = (MIGRATIONS_DIR, app_schema(SAMPLE_APP).migrate_dir)
    before = [_migration_files(folder) for folder in folders]
    try:
        for cmd in (["migrate"], ["makemigration", "noop"]):
            done = subprocess.run([sys.executable, "run.py", *cmd], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "no model changes found"
        assert [_migration_files(folder) for folder in folders] == before
    finally:  # never leave a generated file in a real folder, even when the test fails
        for folder, was in zip(folders, before, strict=True):
            for extra in _migration_files(folder) - was:
                os.remove(os.path.join(folder, extra))


def test_an_added_field_is_the_only_change_and_applies(tmp_path: Path, db_url: str,
                                                       app: AppSchema) -> None:
    db = _up_to_date(db_url, app)

    class BalanceSnapshot(AccountModel):  # the real one plus `note`
        taken_at = pw.DoubleField(index=True)
        available = pw.TextField()
        pending = pw.TextField()
        note = pw.TextField(null=True)

    # the number after the highest so far (not written out: each new migration moves it)
    last = int(sorted(_migration_files(app.migrate_dir))[-1][:3])
    name = make_migration(db, "note", _with(BalanceSnapshot), app=app)
    assert name == f"{last + 1:03d}_note"
    assert _body(app.migrate_dir, name) == (
        "migrator.add_fields(\n'balance_snapshot',\nnote=pw.TextField(null=True))")
    assert migrate(db, apps=[app]) == [f"{APP}/{name}"]
    assert "note" in {c.name for c in db.get_columns("balance_snapshot")}
    # the migration files now match the changed models
    assert make_migration(db, "again", _with(BalanceSnapshot), app=app) is None

    # and the app starts on this database (its own start-up migration finds nothing to do)
    port = free_port()
    proc = start_server(["run.py"], base_env(tmp_path, PORT=str(port), DATABASE_URL=db_url), port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_an_added_index_is_named_as_the_models_name_it(db_url: str, app: AppSchema) -> None:
    db = _up_to_date(db_url, app)

    class BalanceSnapshot(AccountModel):  # the real one plus an index on (mode, taken_at)
        taken_at = pw.DoubleField(index=True)
        available = pw.TextField()
        pending = pw.TextField()

        class Meta:
            indexes = ((("mode", "taken_at"), False),)

    name = make_migration(db, "idx", _with(BalanceSnapshot), app=app)
    assert name is not None
    assert _body(app.migrate_dir, name) == (
        "migrator.add_index('balance_snapshot', 'mode', 'taken_at', unique=False)")
    assert migrate(db, apps=[app]) == [f"{APP}/{name}"]
    assert "balance_snapshot_mode_taken_at" in {i.name for i in db.get_indexes("balance_snapshot")}
    assert make_migration(db, "again", _with(BalanceSnapshot), app=app) is None

    # and dropping it again drops the index add_index made, named after the table
    name = make_migration(db, "unidx", _with(RealSnapshot), app=app)
    assert name is not None
    assert _body(app.migrate_dir, name) == (
        "migrator.drop_index('balance_snapshot', 'mode', 'taken_at')")
    assert migrate(db, apps=[app]) == [f"{APP}/{name}"]
    assert "balance_snapshot_mode_taken_at" not in {
        i.name for i in db.get_indexes("balance_snapshot")}


def test_a_dropped_index_from_create_model_is_dropped(db_url: str, app: AppSchema) -> None:
    """001's create_model named the index on taken_at after the class, not the table."""
    db = _up_to_date(db_url, app)
    assert "balancesnapshot_taken_at" in {i.name for i in db.get_indexes("balance_snapshot")}

    class BalanceSnapshot(AccountModel):  # the real one without the index on taken_at
        taken_at = pw.DoubleField()
        available = pw.TextField()
        pending = pw.TextField()

    name = make_migration(db, "unidx", _with(BalanceSnapshot), app=app)
    assert name is not None
    # peewee-migrate restates the field that lost index=True
    assert _body(app.migrate_dir, name) == (
        "migrator.change_fields('balance_snapshot', taken_at=pw.DoubleField())\n"
        "migrator.drop_index('balance_snapshot', 'taken_at')")
    assert migrate(db, apps=[app]) == [f"{APP}/{name}"]
    left = {i.name for i in db.get_indexes("balance_snapshot")}
    assert "balancesnapshot_taken_at" not in left
    assert "balancesnapshot_account_id" in left  # only that one went
    assert make_migration(db, "again", _with(BalanceSnapshot), app=app) is None
