"""Peewee migrations -- 010_server_defaults.py.

Columns added after 001 that are NOT NULL get their default in the database too, not only in
the models (peewee fills defaults in Python): during a rolling upgrade on PostgreSQL, replicas
still running the previous version insert rows without these columns, and would otherwise fail
on NOT NULL until they are replaced. SQLite serves one host, whose processes upgrade together.
"""

import peewee as pw
from peewee_migrate import Migrator

DEFAULTS = (
    ("installation", "approval_required", "false"),
    ("installation", "details_at", "0"),
    ("job_run", "kind", "'fire'"),
    ("job_run", "seq", "0"),
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if isinstance(database, pw.PostgresqlDatabase):
        for table, column, value in DEFAULTS:
            migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {value}')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if isinstance(database, pw.PostgresqlDatabase):
        for table, column, _ in DEFAULTS:
            migrator.sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP DEFAULT')
