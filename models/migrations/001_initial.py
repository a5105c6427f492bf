"""Peewee migrations -- 001_initial.py.

Some examples (model - class or model name)::

    > Model = migrator.orm['table_name']            # Return model in current state by name
    > Model = migrator.ModelClass                   # Return model in current state by name

    > migrator.sql(sql)                             # Run custom SQL
    > migrator.run(func, *args, **kwargs)           # Run python function with the given args
    > migrator.create_model(Model)                  # Create a model (could be used as decorator)
    > migrator.remove_model(model, cascade=True)    # Remove a model
    > migrator.add_fields(model, **fields)          # Add fields (allow_not_null=True skips default)
    > migrator.change_fields(model, **fields)       # Change fields
    > migrator.remove_fields(model, *field_names, cascade=True)
    > migrator.rename_field(model, old_field_name, new_field_name)
    > migrator.rename_table(model, new_table_name)
    > migrator.add_index(model, *col_names, unique=False)
    > migrator.add_not_null(model, *field_names)
    > migrator.add_default(model, field_name, default)
    > migrator.add_constraint(model, name, sql)
    > migrator.drop_index(model, *col_names)
    > migrator.drop_not_null(model, *field_names)
    > migrator.drop_constraints(model, *constraints)

"""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator


with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """The initial schema."""

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
    class Installation(pw.Model):
        id = pw.AutoField()
        account_id = pw.CharField(max_length=255)
        mode = pw.CharField(max_length=4)
        active = pw.BooleanField(default=False)
        installed_by = pw.CharField(max_length=255, null=True)
        installed_at = pw.DoubleField(null=True)
        uninstalled_at = pw.DoubleField(null=True)
        confirmed = pw.BooleanField(default=False)
        state_at = pw.BigIntegerField(default=0)
        state_seq = pw.DoubleField(default=0.0)
        state_source = pw.CharField(max_length=64, null=True)
        jobs_paused = pw.BooleanField(default=False)
        pause_reason = pw.TextField(null=True)
        created_at = pw.DoubleField()
        updated_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "installation"
            indexes = [(('account_id', 'mode'), True)]

    @migrator.create_model
    class InstallState(pw.Model):
        state = pw.CharField(max_length=128, primary_key=True)
        browser_hash = pw.CharField(max_length=64)
        created_at = pw.DoubleField()
        expires_at = pw.DoubleField(index=True)
        used_at = pw.DoubleField(null=True)
        account_id = pw.CharField(max_length=255, null=True)

        class Meta:
            table_name = "install_state"

    @migrator.create_model
    class JobRun(pw.Model):
        id = pw.AutoField()
        job = pw.CharField(max_length=128)
        account_id = pw.CharField(max_length=255)
        mode = pw.CharField(max_length=4)
        fire_time = pw.BigIntegerField()
        started_at = pw.DoubleField(null=True)
        finished_at = pw.DoubleField(null=True)
        outcome = pw.CharField(default='claimed', max_length=16)
        error = pw.TextField(null=True)
        attempt = pw.IntegerField(default=0)
        replica = pw.CharField(max_length=128, null=True)

        class Meta:
            table_name = "job_run"
            indexes = [(('job', 'account_id', 'mode', 'fire_time'), True), (('account_id', 'mode', 'started_at'), False)]

    @migrator.create_model
    class WebhookEvent(pw.Model):
        id = pw.CharField(max_length=255, primary_key=True)
        type = pw.CharField(index=True, max_length=255)
        account_id = pw.CharField(index=True, max_length=255, null=True)
        livemode = pw.BooleanField()
        created = pw.BigIntegerField()
        payload = pw.TextField()
        received_at = pw.DoubleField()
        status = pw.CharField(default='pending', index=True, max_length=16)
        attempts = pw.IntegerField(default=0)
        last_error = pw.TextField(null=True)
        next_attempt_at = pw.DoubleField(index=True, null=True)
        locked_until = pw.DoubleField(null=True)
        processed_at = pw.DoubleField(null=True)

        class Meta:
            table_name = "webhook_event"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Drop the initial schema."""

    migrator.remove_model('webhook_event')

    migrator.remove_model('job_run')

    migrator.remove_model('install_state')

    migrator.remove_model('installation')

    migrator.remove_model('balance_snapshot')

