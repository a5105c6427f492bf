"""Peewee migrations -- 014_rejected_webhooks.py.

The `rejected_webhook` table: the last deliveries `POST /webhooks` refused, for the status page
(models/rejected_webhooks.py).
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class RejectedWebhook(pw.Model):
        id = pw.AutoField()
        received_at = pw.DoubleField()
        reason = pw.CharField(max_length=512)
        remote = pw.CharField(max_length=64, null=True)
        headers = pw.TextField()
        body = pw.TextField()
        body_size = pw.IntegerField()

        class Meta:
            table_name = "rejected_webhook"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model('rejected_webhook')
