"""Peewee migrations -- 003_status_indexes.py.

Indexes for the operator's status page (service/status.py, models/status.py), so that its
aggregates and pages stay index range scans with 100,000 installations and a million events:
latest installs and uninstalls, paused installations, events by time and by status, job runs by
time and by outcome.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.add_index("installation", "active", "mode")
    migrator.add_index("installation", "installed_at")
    migrator.add_index("installation", "uninstalled_at")
    migrator.add_index("installation", "jobs_paused", "active", "mode", "updated_at")
    migrator.add_index("webhook_event", "received_at", "status")  # covers the hourly chart
    migrator.add_index("webhook_event", "status", "received_at")
    migrator.add_index("job_run", "started_at", "job", "outcome")  # covers runs by outcome
    migrator.add_index("job_run", "outcome", "started_at")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.drop_index("job_run", "outcome", "started_at")
    migrator.drop_index("job_run", "started_at", "job", "outcome")
    migrator.drop_index("webhook_event", "status", "received_at")
    migrator.drop_index("webhook_event", "received_at", "status")
    migrator.drop_index("installation", "jobs_paused", "active", "mode", "updated_at")
    migrator.drop_index("installation", "uninstalled_at")
    migrator.drop_index("installation", "installed_at")
    migrator.drop_index("installation", "active", "mode")
