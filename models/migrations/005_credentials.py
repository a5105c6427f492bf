"""Peewee migrations -- 005_credentials.py: the credentials vault (issue 15)."""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator


with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """One encrypted value per (account, mode, name)."""

    @migrator.create_model
    class Credential(pw.Model):
        id = pw.AutoField()
        account_id = pw.CharField(index=True, max_length=255)
        mode = pw.CharField(max_length=4)
        name = pw.CharField(max_length=64)
        kind = pw.CharField(default='secret', max_length=8)
        value = pw.TextField()
        updated_by = pw.CharField(max_length=255, null=True)
        created_at = pw.DoubleField()
        updated_at = pw.DoubleField()

        class Meta:
            table_name = "credential"
            indexes = [(('account_id', 'mode', 'name'), True)]


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the credentials vault."""

    migrator.remove_model('credential')
