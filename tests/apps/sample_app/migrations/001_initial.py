"""Peewee migrations -- 001_initial.py (the sample app's own, a copy of the example app's).

The example's two tables: `balance_snapshot` (balance_snapshot.py) and `customer_summary`
(sync_customers.py). A database that ran the project's migrations 001-013 already has both (the
project created them before the example became an app, and handed them over in its 015): the
tables and their indexes are created only where missing (peewee's `create_table` is `IF NOT
EXISTS`), under the same names, so this finds them and changes nothing.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class BalanceSnapshot(pw.Model):
        id = pw.AutoField()
        account_id = pw.CharField(index=True, max_length=255)
        mode = pw.CharField(max_length=4)
        taken_at = pw.DoubleField(index=True)
        available = pw.TextField()
        pending = pw.TextField()

        class Meta:
            table_name = "balance_snapshot"

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
    migrator.remove_model('balance_snapshot')
