"""Schema migrations with peewee-migrate: the project's files in `models/migrations/`, and each
app's in its own package's `migrations/` folder.

`migrate(db, apps=...)` applies what is missing (run at start-up and by `run.py migrate`): the
project's migrations first, then each app's, in the order given; `make_migration(db, name)`
writes a new file from the difference between the models and the migrations so far (`run.py
makemigration <name>`), and `make_migration(db, name, app=...)` does it for one app, into that
app's folder, from that app's own models only; without `app` it compares the project's own
models (`PROJECT_PACKAGES`), never an app's. Both take `migrate_dir` (default: the project's
`MIGRATIONS_DIR`, or the app's folder) so that tests can work on a copy of a folder.

Apps. An app is an entry of the loader's (`models/loader.py`: a package name, or the path of a
package directory); `app_schema(entry)` finds its migrations folder (`<package>/migrations`,
missing until its first `makemigration`) and its models (the concrete models defined in its
modules, `models_of`). Each app keeps its own history, apart from the project's and from any
other app's: peewee-migrate's history table per app, `migratehistory_<package>` (the project's
is peewee-migrate's own `migratehistory`), so an app's `001_initial` never meets the project's,
and an app added to a running deployment gets its migrations applied from its first. (The
example app's two tables were the project's until its `015`, which hands them over without a
statement; the example's own `001_initial` then finds them: `create_model` is `IF NOT EXISTS`.)

Index names. peewee-migrate compares the indexes of the app's models with those of the models
the migration files declare *by name*. The app's models set `legacy_table_names = False`, so
peewee names their indexes after the table (`balance_snapshot_account_id`); the migration
files declare plain `pw.Model` classes, which peewee names after the class
(`balancesnapshot_account_id`). Left alone, every `makemigration` would drop and re-add each
index a `create_model` made, with a `drop_index` of a name no database has. `make_migration`
therefore replays the files with `_TableNamedIndexes`, whose models name indexes as ours do.
Applying migrations leaves index creation as it was: the tables a `create_model` makes get the
same class-named indexes on a new database as on every existing one, while `add_index` names
its index after the table. So a database holds both kinds of name, and `_Migrator` (which
applies the files) makes `drop_index` drop whichever of the two the database has.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import peewee as pw
from peewee_migrate import Migrator, Router
from peewee_migrate.models import MIGRATE_TABLE, MigrateHistory
from playhouse.migrate import Operation, make_index_name

from models.base import BaseModel, discover_models, models_of
from models.db import is_sqlite
from models.loader import PROJECT_PACKAGES, load_modules

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")
log = logging.getLogger("app.migrate")
MIGRATION_LOCK = 0x5A1E5


@dataclass(frozen=True)
class AppSchema:
    """What one app brings to the database: its migrations folder, the history table that
    records which of them ran, and its models (see the module doc)."""

    name: str  # the app's package name, as it imports
    migrate_dir: str | None  # None: a plain module (no folder, so no tables of its own)
    table: str
    models: tuple[type[BaseModel], ...]


def app_schema(entry: str) -> AppSchema:
    """The schema of the app `entry` (a package name or a package directory; a plain module
    has no migrations folder), its modules imported by the loader (`LoadError` when one cannot
    be)."""
    modules = load_modules([entry])
    package = modules[0]
    paths = list(getattr(package, "__path__", ()))
    name = package.__name__
    return AppSchema(name, os.path.join(paths[0], "migrations") if paths else None,
                     f"{MIGRATE_TABLE}_{re.sub(r'[^a-z0-9_]', '_', name.lower())}",
                     tuple(models_of(modules)))


class _Migrator(Migrator):
    """The `Migrator` that applies the migration files; `drop_index(model, *columns)` drops the
    index on those columns named after the table (as `add_index` and the app's models name
    it) or, when the database has no such index, the one named after the model class (as a
    `create_model` made it); with neither it fails on the table-named one, as peewee-migrate
    does. The name is looked up when the operation runs, not when a replay records it."""

    def drop_index(self, model: Any, *columns: str) -> Any:
        meta = self.__get_model__(model)._meta
        cols = [meta.fields[c].column_name for c in columns if c in meta.fields]
        table, class_named = meta.table_name, make_index_name(meta.name, cols)
        result = super().drop_index(model, *columns)
        op = self.__ops__.pop()
        if not isinstance(op, Operation):  # peewee-migrate records its drop_index as one
            raise TypeError(f"unexpected drop_index operation from peewee-migrate: {op!r}")
        table_named = op.args[1]
        schema = self.__migrator__

        def drop_index_by_its_name_in_the_database() -> None:
            present = {i.name for i in self.__database__.get_indexes(table)}
            name = class_named if table_named not in present and class_named in present \
                else table_named
            schema.drop_index(table, name).run()

        self.__ops__.append(drop_index_by_its_name_in_the_database)
        return result


class _TableNamedIndexes(_Migrator):
    """A `Migrator` whose models name their indexes after the table, as `BaseModel`'s
    (`legacy_table_names = False`) do; for computing a new migration only, never to apply one.

    Only index names change: each model the migration files create states its `table_name`,
    and peewee names an index when it is asked for one, so setting the flag after the class is
    made is enough (`Metadata.fields_to_index` -> `ModelIndex._generate_name_from_fields`).
    """

    def create_model(self, model: Any) -> Any:
        model._meta.legacy_table_names = False
        return super().create_model(model)


class _Router(Router):
    """peewee-migrate's `Router` with a history model of its own: peewee-migrate's points its
    one `MigrateHistory` class at the latest router's table, and two histories (the project's
    and an app's) must not share it."""

    @cached_property
    def model(self) -> type[MigrateHistory]:
        meta = type("Meta", (), {"database": self.database, "table_name": self.migrate_table,
                                 "schema": self.schema})
        history: type[MigrateHistory] = type(
            f"History_{self.migrate_table}", (MigrateHistory,),
            {"Meta": meta, "__module__": __name__})
        history.create_table(safe=True)
        return history


def _router(db: pw.Database, migrate_dir: str, migrator_class: type[Migrator] = _Migrator,
            table: str = MIGRATE_TABLE) -> Router:
    return _Router(db, migrate_dir=migrate_dir, migrate_table=table,
                   logger=logging.getLogger("peewee_migrate"), migrator_class=migrator_class)


def _histories(migrate_dir: str, apps: Iterable[str | AppSchema]
               ) -> list[tuple[str, str, str]]:
    """(prefix of the names, folder, history table): the project's, then each app's that has
    a migrations folder."""
    found = [("", migrate_dir, MIGRATE_TABLE)]
    for app in apps:
        schema = app if isinstance(app, AppSchema) else app_schema(app)
        if schema.migrate_dir is not None and os.path.isdir(schema.migrate_dir):
            found.append((schema.name + "/", schema.migrate_dir, schema.table))
    return found


def migrate(db: pw.Database, migrate_dir: str = MIGRATIONS_DIR,
            apps: Iterable[str | AppSchema] = ()) -> list[str]:
    """Apply every pending migration, the project's first, then each app's of `apps` (entries
    as the loader takes them) in order; returns the names applied (empty when up to date), an
    app's as `<package>/<name>`."""
    histories = _histories(migrate_dir, apps)
    lock = not is_sqlite(db)
    if lock:  # replicas starting together must not migrate at the same time
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        applied: list[str] = []
        for prefix, folder, table in histories:
            router = _router(db, folder, table=table)
            todo = list(router.diff)
            if todo:
                router.run()
                applied += [prefix + name for name in todo]
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        return applied
    finally:
        if lock:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def pending(db: pw.Database, migrate_dir: str = MIGRATIONS_DIR,
            apps: Iterable[str | AppSchema] = ()) -> list[str]:
    """The migrations `migrate` would apply, named as it names them."""
    return [prefix + name for prefix, folder, table in _histories(migrate_dir, apps)
            for name in _router(db, folder, table=table).diff]


def make_migration(db: pw.Database, name: str, models: Sequence[type[pw.Model]] | None = None,
                   migrate_dir: str | None = None, app: str | AppSchema | None = None
                   ) -> str | None:
    """Write a migration taking the migration files to `models`; return its name, or None (and
    write nothing) when nothing changed. Index names are compared as the app's models make
    them (see the module doc).

    Without `app`: the project's files (`migrate_dir`, default `MIGRATIONS_DIR`), and by
    default the project's own models (`PROJECT_PACKAGES`: no app's). With `app` (an entry as
    the loader takes it, or its `AppSchema`): that app's history and folder (`migrate_dir`
    when given; made when missing), and by default that app's own models only."""
    table = MIGRATE_TABLE
    if app is not None:
        schema = app if isinstance(app, AppSchema) else app_schema(app)
        migrate_dir, table = migrate_dir or schema.migrate_dir, schema.table
        if migrate_dir is None:
            raise ValueError(f"app {schema.name} is a module, not a package: an app with "
                             "tables is a package (a folder with __init__.py), whose "
                             "migrations/ folder holds their migrations")
        if models is None:
            models = schema.models
        os.makedirs(migrate_dir, exist_ok=True)
    if models is None:
        models = discover_models(PROJECT_PACKAGES)
    return _router(db, migrate_dir or MIGRATIONS_DIR, _TableNamedIndexes, table).create(
        name, auto=list(models))
