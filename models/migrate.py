"""Schema migrations with peewee-migrate; the files live in `models/migrations/`.

`migrate(db)` applies what is missing (run at start-up and by `run.py migrate`);
`make_migration(db, name)` writes a new file from the difference between the models and the
migrations so far (`run.py makemigration <name>`). Both take `migrate_dir` (default
`MIGRATIONS_DIR`) so that tests can work on a copy of the folder.

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
from typing import Any

import peewee as pw
from peewee_migrate import Migrator, Router
from playhouse.migrate import Operation, make_index_name

from models.db import is_sqlite

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")
log = logging.getLogger("app.migrate")
MIGRATION_LOCK = 0x5A1E5


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


def _router(db: pw.Database, migrate_dir: str, migrator_class: type[Migrator] = _Migrator
            ) -> Router:
    return Router(db, migrate_dir=migrate_dir, logger=logging.getLogger("peewee_migrate"),
                  migrator_class=migrator_class)


def migrate(db: pw.Database, migrate_dir: str = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date)."""
    lock = not is_sqlite(db)
    if lock:  # replicas starting together must not migrate at the same time
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        router = _router(db, migrate_dir)
        todo = list(router.diff)
        if todo:
            router.run()
            log.info("applied migrations: %s", ", ".join(todo))
        return todo
    finally:
        if lock:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def pending(db: pw.Database, migrate_dir: str = MIGRATIONS_DIR) -> list[str]:
    return list(_router(db, migrate_dir).diff)


def make_migration(db: pw.Database, name: str, models: list[type[pw.Model]] | None = None,
                   migrate_dir: str = MIGRATIONS_DIR) -> str | None:
    """Write a migration taking the migration files to `models` (default: every model
    `discover_models()` finds); return its name, or None (and write nothing) when nothing
    changed. Index names are compared as the app's models make them (see the module doc)."""
    if models is None:
        from models.base import discover_models

        models = list(discover_models())
    return _router(db, migrate_dir, _TableNamedIndexes).create(name, auto=models)
