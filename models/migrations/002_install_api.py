"""Peewee migrations -- 002_install_api.py.

What Stripe's Install API says about each installation (issue 14): the install's id and status,
the permissions granted and pending, whether the installer must approve, and the `created` of
the change that set them (so an older `apps.install.updated` never undoes a newer one); and
room in `job_run.outcome` for `missing_permission`.
"""

from contextlib import suppress

import peewee as pw
from peewee_migrate import Migrator


with suppress(ImportError):
    import playhouse.postgres_ext as pw_pext


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add the Install API's fields to installation."""

    migrator.add_fields(
        'installation',
        install_id=pw.CharField(max_length=255, null=True),
        install_status=pw.CharField(max_length=32, null=True),
        permissions_granted=pw.TextField(null=True),
        permissions_pending=pw.TextField(null=True),
        approval_required=pw.BooleanField(default=False),
        details_at=pw.BigIntegerField(default=0))
    # room for the outcome `missing_permission`
    migrator.change_fields('job_run', outcome=pw.CharField(default='claimed', max_length=32))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Remove them."""

    migrator.change_fields('job_run', outcome=pw.CharField(default='claimed', max_length=16))

    migrator.remove_fields('installation', 'install_id', 'install_status', 'permissions_granted',
                           'permissions_pending', 'approval_required', 'details_at')
