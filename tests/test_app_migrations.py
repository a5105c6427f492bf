"""An app's own tables (issue 24): its migrations folder, its own history, the project's
migrations applied first, and its rows deleted on uninstall.

The app is a small package written into tmp_path (never the project's example app); every
test runs on a real SQLite file and on a fresh PostgreSQL database (`db_url`), but the
command-line one (SQLite). Nothing is written into the project's own migrations folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import peewee as pw
import pytest
from conftest import ROOT, SAMPLE_APP, base_env

from models.base import discover_models, models_of
from models.db import Storage, open_database
from models.installation import Change, InstallChange, apply_state
from models.installation_index import InstallationIndex
from models.loader import load_modules
from models.migrate import MIGRATIONS_DIR, app_schema, make_migration, migrate, pending
from service.config import Config
from service.doctor import Status, check_database
from service.services import Services

APP = "notes_app"  # the test app's package; its modules leave sys.modules after each test

NOTES = '''
import peewee as pw

from models.base import AccountModel


class Note(AccountModel):
    text = pw.TextField()
    pinned = pw.BooleanField(default=False, index=True)

    class Meta:
        indexes = ((("account_id", "pinned"), False),)
'''

TAGS = '''
import peewee as pw

from models.base import AccountModel


class Tag(AccountModel):
    label = pw.CharField(max_length=40)
'''


def _files(folder: str) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith(".py") and n[:3].isdigit()}


@pytest.fixture
def app_dir(tmp_path, monkeypatch):
    """`tmp_path/apps/notes_app`, a package with one table and no migrations yet."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    package = tmp_path / "apps" / APP
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "notes.py").write_text(textwrap.dedent(NOTES))
    yield package
    for name in [n for n in sys.modules if n == APP or n.startswith(APP + ".")]:
        del sys.modules[name]


def _body(path: Path) -> str:
    """The code of a generated file's migrate() (peewee-migrate's docstring left out)."""
    text = path.read_text()
    return text[text.index("def migrate("):text.index("def rollback(")]


def _history(db: pw.Database, table: str) -> list[str]:
    return [row[0] for row in db.execute_sql(f'SELECT name FROM "{table}" ORDER BY id')]


def test_an_app_has_its_own_migrations_applied_after_the_projects(db_url, app_dir):
    project = sorted(name[:-3] for name in _files(MIGRATIONS_DIR))
    before = _files(MIGRATIONS_DIR)
    db = open_database(db_url)
    assert migrate(db) == project  # the project alone first: the app's folder does not exist
    assert migrate(db, apps=[str(app_dir)]) == []  # an app with no migrations yet: nothing

    # the first migration: the app's one table, from the app's models only, into its folder
    assert make_migration(db, "initial", app=str(app_dir)) == "001_initial"
    assert _files(str(app_dir / "migrations")) == {"001_initial.py"}
    assert _files(MIGRATIONS_DIR) == before
    body = _body(app_dir / "migrations" / "001_initial.py")
    assert "class Note(pw.Model)" in body and 'table_name = "note"' in body
    assert body.count("create_model") == 1 and "remove_model" not in body  # no project table
    assert pending(db, apps=[str(app_dir)]) == [f"{APP}/001_initial"]

    assert migrate(db, apps=[str(app_dir)]) == [f"{APP}/001_initial"]
    assert {"text", "pinned", "account_id", "mode"} <= {c.name for c in db.get_columns("note")}
    # its own history, apart from the project's
    assert _history(db, f"migratehistory_{APP}") == ["001_initial"]
    assert _history(db, "migratehistory") == project
    assert migrate(db, apps=[str(app_dir)]) == []
    # the indexes compare as the models name them: nothing to write (module doc of migrate.py)
    assert make_migration(db, "again", app=str(app_dir)) is None

    # a new module with a new table: the next migration holds that table only
    (app_dir / "tags.py").write_text(textwrap.dedent(TAGS))
    assert make_migration(db, "tags", app=str(app_dir)) == "002_tags"
    body = _body(app_dir / "migrations" / "002_tags.py")
    assert "class Tag(pw.Model)" in body and "note" not in body.lower()
    assert body.count("create_model") == 1 and "remove_model" not in body
    assert migrate(db, apps=[str(app_dir)]) == [f"{APP}/002_tags"]
    assert db.table_exists("tag")
    assert make_migration(db, "again", app=str(app_dir)) is None
    db.close()


def test_a_fresh_database_gets_the_projects_migrations_then_the_apps(db_url, app_dir, tmp_path):
    scratch = open_database(f"sqlite:///{tmp_path}/scratch.db")
    migrate(scratch)
    assert make_migration(scratch, "initial", app=str(app_dir)) == "001_initial"
    scratch.close()

    db = open_database(db_url)
    project = sorted(name[:-3] for name in _files(MIGRATIONS_DIR))
    assert migrate(db, apps=[APP]) == [*project, f"{APP}/001_initial"]  # by package name too
    assert db.table_exists("note") and db.table_exists("installation")
    db.close()


def test_app_schema_names_the_folder_table_and_models(app_dir):
    schema = app_schema(str(app_dir))
    notes = sys.modules[f"{APP}.notes"]
    assert schema.name == APP
    assert schema.migrate_dir == str(app_dir / "migrations")
    assert schema.table == f"migratehistory_{APP}"
    assert schema.models == (notes.Note,)  # the app's, none of the project's


@pytest.mark.gen_test(timeout=60)
async def test_uninstall_deletes_the_apps_rows_of_that_account_and_mode(db_url, app_dir,
                                                                        tmp_path):
    db = open_database(db_url)
    migrate(db)
    make_migration(db, "initial", app=str(app_dir))
    migrate(db, apps=[str(app_dir)])
    Note = sys.modules[f"{APP}.notes"].Note
    for account in ("acct_1", "acct_2"):
        for mode in ("live", "test"):
            apply_state(account, mode, True, 100, "seed", confirm=True)
            Note.create(account_id=account, mode=mode, text=f"{account} {mode}")

    # the loaded model list: the project's and the app's, as the service loads them
    loaded = models_of(load_modules(["models", "jobs", str(app_dir)]))
    assert Note in loaded and Note not in discover_models()
    storage = Storage(db, workers=1)
    door = InstallationIndex(storage, loaded)
    await door.load()
    try:
        out = await door.apply(InstallChange("acct_1", "live", Change.UNINSTALLED, 200, "evt_1"))
        assert out.flipped and out.deleted == 1
        left = await storage.run(lambda: sorted(
            (n.account_id, n.mode) for n in Note.select()))
        assert left == [("acct_1", "test"), ("acct_2", "live"), ("acct_2", "test")]
    finally:
        storage.close()
        db.close()


def test_makemigration_command_writes_into_the_apps_folder(tmp_path, app_dir):
    env = {**os.environ, **base_env(tmp_path)}
    env.pop("APP_PACKAGES", None)
    before = _files(MIGRATIONS_DIR)
    try:
        done = subprocess.run(
            [sys.executable, "run.py", "makemigration", "initial", "--app", str(app_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        written = app_dir / "migrations" / "001_initial.py"
        assert done.stdout.strip() == f"wrote {written}"  # outside the clone: in full
        assert written.is_file()
        assert _files(MIGRATIONS_DIR) == before
        done = subprocess.run(
            [sys.executable, "run.py", "makemigration", "again", "--app", str(app_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "no model changes found"  # it applied 001 first
    finally:  # never leave a generated file in the real folder, even when the test fails
        for extra in _files(MIGRATIONS_DIR) - before:
            os.remove(os.path.join(MIGRATIONS_DIR, extra))


def test_a_database_of_the_previous_version_hands_the_example_tables_to_the_app(db_url,
                                                                                 tmp_path):
    """Before 015 the project's migrations held the example's tables; on such a database the
    project's 015 forgets them without a statement and the app's 001_initial finds them: the
    rows and the index names stay, and neither the project nor the app has a change left."""
    old = tmp_path / "previous"
    [handover] = [n[:-3] for n in _files(MIGRATIONS_DIR)
                  if n.endswith("_example_tables_to_the_example_app.py")]
    later = sorted(n[:-3] for n in _files(MIGRATIONS_DIR)
                   if n.endswith(".py") and n[:-3] > handover)
    shutil.copytree(MIGRATIONS_DIR, old, ignore=shutil.ignore_patterns(
        "__pycache__", handover + ".py", *(name + ".py" for name in later)))
    db = open_database(db_url)
    assert handover not in migrate(db, str(old))
    db.execute_sql("INSERT INTO balance_snapshot (account_id, mode, taken_at, available, "
                   "pending) VALUES ('acct_1', 'live', 1, '[]', '[]')")
    indexes = {i.name for i in db.get_indexes("balance_snapshot")}

    app_files = sorted(f"sample_app/{n[:-3]}" for n in _files(app_schema(SAMPLE_APP).migrate_dir)
                       if n.endswith(".py") and n[0].isdigit())
    assert migrate(db, apps=[SAMPLE_APP]) == [handover, *later, *app_files]
    assert app_files[0] == "sample_app/001_initial"
    assert db.execute_sql("SELECT count(*) FROM balance_snapshot").fetchone()[0] == 1
    assert {i.name for i in db.get_indexes("balance_snapshot")} == indexes
    app_copy = shutil.copytree(app_schema(SAMPLE_APP).migrate_dir, tmp_path / "app",
                               ignore=shutil.ignore_patterns("__pycache__"))
    assert make_migration(db, "noop", migrate_dir=str(app_copy), app=SAMPLE_APP) is None
    project = shutil.copytree(MIGRATIONS_DIR, tmp_path / "project",
                              ignore=shutil.ignore_patterns("__pycache__"))
    assert make_migration(db, "noop", migrate_dir=str(project)) is None
    db.close()


@pytest.mark.gen_test(timeout=60)
async def test_start_up_migrates_the_app_and_its_door_deletes_the_apps_rows(db_url, app_dir,
                                                                             tmp_path):
    """The service as it runs: start-up applies the app's migrations after the project's, and
    an uninstall through its door deletes the app's rows (the model list the service loaded)."""
    scratch = open_database(f"sqlite:///{tmp_path}/scratch.db")
    migrate(scratch)
    make_migration(scratch, "initial", app=str(app_dir))
    scratch.close()

    config = Config.from_env(base_env(tmp_path, DATABASE_URL=db_url,
                                      APP_PACKAGES=str(app_dir)))
    services = Services(config)
    await services.start(until="installations")
    try:
        assert services.migrations_applied[-1] == f"{APP}/001_initial"
        Note = sys.modules[f"{APP}.notes"].Note

        def seed() -> None:
            for account in ("acct_1", "acct_2"):
                for mode in ("live", "test"):
                    apply_state(account, mode, True, 100, "seed", confirm=True)
                    Note.create(account_id=account, mode=mode, text="x")

        await services.storage.run(seed)
        out = await services.installations.apply(
            InstallChange("acct_2", "test", Change.UNINSTALLED, 200, "evt_2"))
        assert out.deleted == 1
        left = await services.storage.run(lambda: sorted(
            (n.account_id, n.mode) for n in Note.select()))
        assert left == [("acct_1", "live"), ("acct_1", "test"), ("acct_2", "live")]
    finally:
        await services.stop()


def test_the_docs_table_and_commands_as_written(tmp_path, monkeypatch):
    """docs/apps.md's `hello_app/notes.py`, in an app folder outside the project, with the
    doc's two commands: the first migration is written into the app's folder and applied."""
    doc = Path(ROOT, "docs", "apps.md").read_text()
    [source] = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S)
                if b.startswith("# hello_app/notes.py\n")]
    app = tmp_path / "myapps" / "hello_app"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text('"""My Stripe App backend."""\n')
    (app / "notes.py").write_text(source)
    env = {**os.environ, **base_env(tmp_path, APP_PACKAGES=str(app))}
    said = []
    for command in (["makemigration", "initial"], ["migrate"]):
        assert f".venv/bin/python run.py {' '.join(command)} " in doc
        done = subprocess.run([sys.executable, "run.py", *command], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        said.append(done.stdout.strip())
    assert said[0] == f"wrote {app / 'migrations' / '001_initial.py'}"
    assert "# writes hello_app/migrations/001_initial.py" in doc
    assert said[1] == "applied: hello_app/001_initial"
    db = open_database(env["DATABASE_URL"])
    assert {"text", "pinned"} <= {c.name for c in db.get_columns("note")}
    db.close()


def test_a_single_module_app_has_no_migrations_and_is_told_so(tmp_path, monkeypatch):
    """An app may be one module (the loader takes it): it has no folder, so `migrate` passes it
    by and `makemigration` says why it cannot write one, in one line (exit 2)."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "lone_mod.py").write_text("X = 1\n")
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    try:
        db = open_database(f"sqlite:///{tmp_path}/lone.db")
        project = sorted(name[:-3] for name in _files(MIGRATIONS_DIR))
        assert migrate(db, apps=["lone_mod"]) == project
        assert app_schema("lone_mod").migrate_dir is None
        with pytest.raises(ValueError, match="a module, not a package"):
            make_migration(db, "initial", app="lone_mod")
        db.close()
    finally:
        sys.modules.pop("lone_mod", None)
    env = {**os.environ, **base_env(tmp_path, APP_PACKAGES="lone_mod"),
           "PYTHONPATH": str(folder)}
    done = subprocess.run([sys.executable, "run.py", "makemigration", "initial"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("lone_mod is a module, not a package")
    assert "Traceback" not in done.stderr


@pytest.mark.gen_test(timeout=60)
async def test_doctor_names_an_apps_pending_migration(tmp_path, app_dir):
    db = open_database(f"sqlite:///{tmp_path}/doctor.db")
    migrate(db)
    make_migration(db, "initial", app=str(app_dir))
    storage = Storage(db, workers=1)
    try:
        [_, found] = await check_database(storage, [str(app_dir)])
        assert found.status is Status.FAILED
        assert found.message == f"1 migration(s) not applied: {APP}/001_initial"
        await storage.run(migrate, db, apps=[str(app_dir)])
        [_, found] = await check_database(storage, [str(app_dir)])
        assert (found.status, found.message) == (Status.OK, "migrations are current")
    finally:
        storage.close()
