"""Peewee migrations -- 004_tasks.py: long-running tasks and the example task's app data."""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """The task table (models/tasks.py) and the customer summary (models/customers.py)."""

    @migrator.create_model
    class Task(pw.Model):
        id = pw.CharField(max_length=40, primary_key=True)
        account_id = pw.CharField(index=True, max_length=255)
        mode = pw.CharField(max_length=4)
        name = pw.CharField(max_length=128)
        input = pw.TextField(default='{}')
        status = pw.CharField(default='queued', max_length=16)
        progress = pw.DoubleField(null=True)
        note = pw.TextField(null=True)
        result = pw.TextField(null=True)
        error = pw.TextField(null=True)
        attempts = pw.IntegerField(default=0)
        max_attempts = pw.IntegerField(default=3)
        lease_until = pw.DoubleField(null=True)
        claimed_by = pw.CharField(max_length=128, null=True)
        created_at = pw.DoubleField()
        started_at = pw.DoubleField(null=True)
        finished_at = pw.DoubleField(null=True)
        next_attempt_at = pw.DoubleField()

        class Meta:
            table_name = "task"
            indexes = [(('status', 'next_attempt_at'), False),
                       (('account_id', 'name', 'status'), False)]

    @migrator.create_model
    class CustomerSummary(pw.Model):
        id = pw.AutoField()
        account_id = pw.CharField(index=True, max_length=255)
        mode = pw.CharField(max_length=4)
        count = pw.IntegerField(null=True)
        latest_id = pw.CharField(max_length=255, null=True)
        latest_created = pw.BigIntegerField(null=True)
        synced_at = pw.DoubleField(null=True)
        run_task = pw.CharField(max_length=40, null=True)
        run_cursor = pw.CharField(max_length=255, null=True)
        run_count = pw.IntegerField(default=0)
        run_latest_id = pw.CharField(max_length=255, null=True)
        run_latest_created = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "customer_summary"
            indexes = [(('account_id', 'mode'), True)]


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model('customer_summary')
    migrator.remove_model('task')
