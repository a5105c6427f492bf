"""Peewee migrations -- 007_stateless_install_state.py.

Install-link states became signed tokens (service/state_token.py): `install_state` now holds
only the nonces of states a valid callback used (single use), not every state `GET /install`
issued. Unused rows of the old shape mean nothing any more; the table is recreated.
"""

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    """install_state: one row per used state nonce."""

    migrator.remove_model('install_state')

    @migrator.create_model
    class InstallState(pw.Model):
        state = pw.CharField(max_length=128, primary_key=True)
        account_id = pw.CharField(max_length=255)
        used_at = pw.DoubleField()
        expires_at = pw.DoubleField(index=True)

        class Meta:
            table_name = "install_state"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    """Back to one row per issued state (rows are not kept)."""

    migrator.remove_model('install_state')

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
