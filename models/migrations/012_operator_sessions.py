"""Peewee migrations -- 012_operator_sessions.py.

The `operator_session` table: the status page's log-in sessions, so that a log-out ends a
session in every process and replica (models/operator_sessions.py).
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class OperatorSession(pw.Model):
        id = pw.CharField(max_length=64, primary_key=True)
        created_at = pw.DoubleField()
        expires_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "operator_session"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model('operator_session')
