"""Peewee migrations -- 002_sandbox_mode_width.py.

The `mode` columns widened from 4 to 16 for the `sandbox` mode (the backend's migration 016 did
the same to its own tables), written by `run.py --app ... makemigration sandbox_mode_width`.
"""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator


with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.change_fields('balance_snapshot', mode=pw.CharField(max_length=16))

    migrator.change_fields('customer_summary', mode=pw.CharField(max_length=16))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.change_fields('customer_summary', mode=pw.CharField(max_length=4))

    migrator.change_fields('balance_snapshot', mode=pw.CharField(max_length=4))
