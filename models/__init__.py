"""Peewee models, database setup and migrations.

Add a table: define a model in a module of a package the loader walks (`models/loader.py`;
subclass `AccountModel` for per-account app data so that an uninstall deletes it), then `python
run.py makemigration <name>`. Nothing needs to import it: `discover_models()` finds every model
of those packages, for migrations and for the uninstall cleanup. The imports below are only
shorthands.
"""

from models.base import AccountModel, BaseModel, discover_models, models_of
from models.credentials import Credential
from models.db import Storage, database, open_database
from models.events import WebhookEvent
from models.install_state import InstallState
from models.installation import Installation, InstallationView
from models.jobs import JobRun
from models.loader import load_modules
from models.tasks import Task

__all__ = [
    "AccountModel", "BaseModel", "Credential", "InstallState", "Installation",
    "InstallationView", "JobRun", "Storage", "Task", "WebhookEvent", "database",
    "discover_models", "load_modules", "models_of", "open_database",
]
