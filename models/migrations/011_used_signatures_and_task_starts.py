"""Peewee migrations -- 011_used_signatures_and_task_starts.py.

The `used_signature` table: extension signatures already used on a state-changing endpoint
(models/used_signatures.py). An index on task (account_id, created_at): the per-account start
limit counts an account's tasks started in the last minute by it (models/tasks.py).
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class UsedSignature(pw.Model):
        key = pw.CharField(max_length=64, primary_key=True)
        expires_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "used_signature"

    migrator.add_index('task', 'account_id', 'created_at')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.drop_index('task', 'account_id', 'created_at')
    migrator.remove_model('used_signature')
