"""Peewee migrations -- 011_install_confirmation.py.

Installs only when Stripe says so (issue 23): `installation.pending_at` marks a Marketplace
install waiting for Stripe's confirmation, and `used_install_signature` holds one row per install
signature a callback accepted, so that none is accepted twice, on any replica.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add installation.pending_at and the used_install_signature table."""

    migrator.add_fields('installation', pending_at=pw.DoubleField(null=True))

    @migrator.create_model
    class UsedInstallSignature(pw.Model):
        digest = pw.CharField(max_length=64, primary_key=True)
        account_id = pw.CharField(max_length=255)
        used_at = pw.DoubleField()
        expires_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "used_install_signature"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Remove them."""

    migrator.remove_model('used_install_signature')
    migrator.remove_fields('installation', 'pending_at')
