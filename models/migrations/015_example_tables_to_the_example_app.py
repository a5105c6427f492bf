"""Peewee migrations -- 015_example_tables_to_the_example_app.py.

The example's tables, `balance_snapshot` (001) and `customer_summary` (004), now belong to the
example app, whose own migrations declare them (example_app/migrations/001_initial.py; an app's
migrations run after the project's, with their own history: models/migrate.py). The project's
migrations stop declaring them, and nothing happens in the database: the tables and their rows
stay (on a database that had them, the app's `001_initial` finds them there and creates
nothing). Without this, the project's `makemigration`, which compares the project's own models
only, would write a migration dropping them.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    with migrator.fake():  # the project forgets them; no statement runs
        migrator.remove_model('balance_snapshot')
        migrator.remove_model('customer_summary')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    with migrator.fake():
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
