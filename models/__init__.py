"""Peewee models, database setup and migrations.

Add a table: define a model here (subclass `AccountModel` for per-account app data so that an
uninstall deletes it), import it below, then `python run.py makemigration <name>`.
"""

from models.base import AccountModel, BaseModel
from models.credentials import Credential
from models.db import Storage, database, open_database
from models.events import WebhookEvent
from models.install_state import InstallState
from models.installation import Installation, InstallationView
from models.jobs import JobRun
from models.snapshots import BalanceSnapshot

ALL_MODELS = [Installation, InstallState, WebhookEvent, JobRun, BalanceSnapshot, Credential]

__all__ = [
    "ALL_MODELS", "AccountModel", "BalanceSnapshot", "BaseModel", "Credential", "InstallState",
    "Installation", "InstallationView", "JobRun", "Storage", "WebhookEvent", "database",
    "open_database",
]
