"""Peewee migrations -- 008_task_finished_index.py.

An index on task (status, finished_at): the status page counts and lists finished tasks by it,
and retention (models/retention.py) deletes old finished tasks by it.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.add_index('task', 'status', 'finished_at')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.drop_index('task', 'status', 'finished_at')
