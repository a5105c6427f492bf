"""Peewee models, database setup and migrations.

Add a table: define a model in a module of this package (subclass `AccountModel` for
per-account app data so that an uninstall deletes it), then `python run.py makemigration
<name>`. Nothing needs to import it: `discover_models()` finds every model of the package, for
migrations and for the uninstall cleanup. The imports below are only shorthands.
"""

from models.base import AccountModel, BaseModel, discover_models
from models.credentials import Credential
from models.db import Storage, database, open_database
from models.events import WebhookEvent
from models.install_state import InstallState
from models.installation import Installation, InstallationView
from models.jobs import JobRun
from models.snapshots import BalanceSnapshot
from models.tasks import Task

#: Every model of the package, as `discover_models()` found them when `models` was imported.
ALL_MODELS = discover_models()

__all__ = [
    "ALL_MODELS", "AccountModel", "BalanceSnapshot", "BaseModel", "Credential",
    "InstallState", "Installation",
    "InstallationView", "JobRun", "Storage", "Task", "WebhookEvent", "database",
    "discover_models", "open_database",
]
