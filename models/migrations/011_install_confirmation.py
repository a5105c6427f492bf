"""Peewee migrations -- 011_install_confirmation.py.

Installs only when Stripe says so (issue 23): `installation.pending_at` marks a Marketplace
install waiting for Stripe's confirmation. (The install signatures a callback accepted are kept
in the one table of used signatures, `used_signature`, migration 013.)
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """Add installation.pending_at."""

    migrator.add_fields('installation', pending_at=pw.DoubleField(null=True))


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Remove it."""

    migrator.remove_fields('installation', 'pending_at')
