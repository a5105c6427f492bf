"""Peewee migrations -- 013_used_signatures_and_task_bounds.py.

The `used_signature` table: extension signatures already used on a state-changing endpoint
(models/used_signatures.py). On task, a `size` column (what the row counts for against its
account's storage bound: the bytes of its input, result and error, and 256), filled in for the
rows already there, with a default in the database too on PostgreSQL (as 010 explains), and an
index on (account_id, created_at, size): the per-account start bounds count an account's starts
in the last minute and sum its sizes from it alone (models/tasks.py).
"""

import peewee as pw
from peewee_migrate import Migrator

ROW_BYTES = 256


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class UsedSignature(pw.Model):
        key = pw.CharField(max_length=64, primary_key=True)
        expires_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "used_signature"

    migrator.add_fields('task', size=pw.IntegerField(default=0))
    if isinstance(database, pw.PostgresqlDatabase):
        migrator.sql('ALTER TABLE "task" ALTER COLUMN "size" SET DEFAULT 0')
        octets = "COALESCE(OCTET_LENGTH({}), 0)"
    else:
        octets = "COALESCE(LENGTH(CAST({} AS BLOB)), 0)"
    migrator.sql(f'UPDATE "task" SET "size" = {octets.format("input")} + '
                 f'{octets.format("result")} + {octets.format("error")} + {ROW_BYTES}')
    migrator.add_index('task', 'account_id', 'created_at', 'size')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.drop_index('task', 'account_id', 'created_at', 'size')
    migrator.remove_fields('task', 'size')
    migrator.remove_model('used_signature')
