"""Schema migrations with peewee-migrate; the files live in `models/migrations/`.

`migrate(db)` applies what is missing (run at start-up and by `run.py migrate`);
`make_migration(db, name)` writes a new file from the difference between the models and the
migrations so far (`run.py makemigration <name>`).
"""

from __future__ import annotations

import logging
import os

import peewee as pw
from peewee_migrate import Router

from models.db import is_sqlite

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")
log = logging.getLogger("app.migrate")
MIGRATION_LOCK = 0x5A1E5


def _router(db: pw.Database) -> Router:
    return Router(db, migrate_dir=MIGRATIONS_DIR, logger=logging.getLogger("peewee_migrate"))


def migrate(db: pw.Database) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date)."""
    lock = not is_sqlite(db)
    if lock:  # replicas starting together must not migrate at the same time
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        router = _router(db)
        todo = list(router.diff)
        if todo:
            router.run()
            log.info("applied migrations: %s", ", ".join(todo))
        return todo
    finally:
        if lock:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def pending(db: pw.Database) -> list[str]:
    return list(_router(db).diff)


def make_migration(db: pw.Database, name: str) -> str | None:
    """Write a migration for every model `discover_models()` finds; None when nothing changed."""
    from models.base import discover_models

    return _router(db).create(name, auto=discover_models())
