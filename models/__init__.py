"""Peewee models, database setup and migrations.

Add a table: define a model here (subclass `AccountModel` for per-account app data so that an
uninstall deletes it), import it below, then `python run.py makemigration <name>`.
"""

from models.base import AccountModel, BaseModel
from models.customers import CustomerSummary
from models.db import Storage, database, open_database
from models.events import WebhookEvent
from models.install_state import InstallState
from models.installation import Installation, InstallationView
from models.jobs import JobRun
from models.snapshots import BalanceSnapshot
from models.tasks import Task

ALL_MODELS = [Installation, InstallState, WebhookEvent, JobRun, BalanceSnapshot, Task,
              CustomerSummary]

__all__ = [
    "ALL_MODELS", "AccountModel", "BalanceSnapshot", "BaseModel", "CustomerSummary",
    "InstallState", "Installation", "InstallationView", "JobRun", "Storage", "Task",
    "WebhookEvent", "database", "open_database",
]
