"""Peewee migrations -- 006_leases_and_run_kinds.py.

Short, renewed leases (models/leases.py) for webhook events and job runs, the kinds of job run
claims (models/enums.RunKind), and the indexes retention (models/retention.py) deletes by.

- webhook_event.claimed_by: who holds the claim, so only its holder renews or finishes it;
- job_run.kind, job_run.seq: in the unique key with the fire, so the retry of an interrupted
  fire, manual runs and skip records never collide with the fire's own claim;
- job_run.lease_until (indexed): the lease of a run under way; runs left running by an older
  version (no lease) get an expired one, so the sweeper marks them `interrupted`;
- indexes: webhook_event (status, processed_at), job_run.finished_at.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.add_fields('webhook_event', claimed_by=pw.CharField(max_length=128, null=True))
    migrator.add_index('webhook_event', 'status', 'processed_at')

    migrator.add_fields(
        'job_run',
        kind=pw.CharField(max_length=8, default='fire'),
        seq=pw.IntegerField(default=0),
        lease_until=pw.DoubleField(null=True, index=True))
    # 001 created this index under the model's name (jobrun_...), not the table's, so it is
    # dropped by name, and the migrator's picture of the model is told.
    migrator.sql('DROP INDEX "jobrun_job_account_id_mode_fire_time"')
    job_run = migrator.orm['job_run']
    job_run._meta.indexes = [(cols, unique) for cols, unique in job_run._meta.indexes
                             if tuple(cols) != ('job', 'account_id', 'mode', 'fire_time')]
    migrator.add_index('job_run', 'job', 'account_id', 'mode', 'fire_time', 'kind', 'seq',
                       unique=True)
    migrator.add_index('job_run', 'finished_at')
    migrator.sql("UPDATE job_run SET lease_until = 0 "
                 "WHERE outcome IN ('claimed', 'running', 'retrying')")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.drop_index('job_run', 'finished_at')
    migrator.drop_index('job_run', 'lease_until')
    migrator.drop_index('job_run', 'job', 'account_id', 'mode', 'fire_time', 'kind', 'seq')
    migrator.remove_fields('job_run', 'kind', 'seq', 'lease_until')
    migrator.add_index('job_run', 'job', 'account_id', 'mode', 'fire_time', unique=True)
    migrator.drop_index('webhook_event', 'status', 'processed_at')
    migrator.remove_fields('webhook_event', 'claimed_by')
