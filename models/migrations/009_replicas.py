"""Peewee migrations -- 009_replicas.py.

The `replica` table: each server process's heartbeat, for the status page (models/replicas.py).
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class Replica(pw.Model):
        name = pw.CharField(max_length=128, primary_key=True)
        host = pw.CharField(max_length=255)
        pid = pw.IntegerField()
        version = pw.CharField(max_length=64)
        started_at = pw.DoubleField()
        seen_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "replica"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model('replica')
