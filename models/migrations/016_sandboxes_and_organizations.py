"""Peewee migrations -- 016_sandboxes_and_organizations.py (issue 26).

Sandboxes: a third mode, `sandbox`, which does not fit the `mode` columns (`max_length=4`): they
are widened to 16 (PostgreSQL enforces the width; SQLite ignores it, so there only the recorded
schema changes). `webhook_event.sandbox` marks an event verified with a sandbox secret (its body
says `livemode: false`, like a test event's), false for every row stored before.

Organizations: `webhook_event.context` keeps an event's `context`, and `installation.context`
the `Stripe-Context` an installation's calls use (null: `Stripe-Account`, as before), and
`installation.context_at` the `created` of the event that set it (models/context.py).

New NOT NULL columns get their default in the database too (as 010 did): a replica of the
previous version, during a rolling upgrade, inserts without them.

An app's own tables with a `mode` column (an `AccountModel`) keep their width until the app's
own `makemigration` widens them (docs/apps.md, "Upgrading").
"""

import peewee as pw
from peewee_migrate import Migrator

WIDENED = ("installation", "job_run", "task", "credential")


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    for table in WIDENED:
        migrator.change_fields(table, mode=pw.CharField(max_length=16))
    migrator.add_fields('webhook_event', sandbox=pw.BooleanField(default=False),
                        context=pw.CharField(max_length=255, null=True))
    migrator.add_fields('installation', context=pw.CharField(max_length=255, null=True),
                        context_at=pw.BigIntegerField(default=0))
    if isinstance(database, pw.PostgresqlDatabase):
        migrator.sql('ALTER TABLE "webhook_event" ALTER COLUMN "sandbox" SET DEFAULT false')
        migrator.sql('ALTER TABLE "installation" ALTER COLUMN "context_at" SET DEFAULT 0')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_fields('installation', 'context', 'context_at')
    migrator.remove_fields('webhook_event', 'sandbox', 'context')
    for table in WIDENED:
        migrator.change_fields(table, mode=pw.CharField(max_length=4))
