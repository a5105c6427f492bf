"""The model base classes, and the discovery of every model.

`BaseModel` binds a table to the deferred database. `AccountModel` is the base for app data that
belongs to one connected account in one mode: when an account uninstalls the app in a mode,
every `AccountModel` table loses that account's rows in that mode (the installation record and
the event audit trail stay).

`discover_models()` imports every module of the `models` package and returns the models they
define, so a table added in a new module is migrated and cleaned up on uninstall without being
imported or listed anywhere (as `Registry.discover()` does for jobs). A base class meant only to
be subclassed sets `__abstract__ = True` in its body and is not a table.
"""

from __future__ import annotations

import importlib
import pkgutil
import time

import peewee as pw

from models.db import database


def now() -> float:
    return time.time()


class BaseModel(pw.Model):
    __abstract__ = True

    class Meta:
        database = database
        legacy_table_names = False


class AccountModel(BaseModel):
    __abstract__ = True

    account_id = pw.CharField(max_length=255, index=True)
    mode = pw.CharField(max_length=4)  # a Mode: "live" or "test"

    @classmethod
    def delete_account_data(cls, account_id: str, mode: str) -> int:
        """Delete this account's rows in `mode` from every AccountModel table; return the count.

        The tables are those of `discover_models()`, whether or not anything imported them.
        """
        deleted = 0
        for model in discover_models():
            if issubclass(model, cls):
                deleted += (
                    model.delete()
                    .where((model.account_id == account_id) & (model.mode == mode))
                    .execute()
                )
        return deleted


def discover_models(package: str = "models") -> list[type[BaseModel]]:
    """Import every module of `package` (not its subpackages, such as `migrations`) and return
    the concrete models they define, by module name, then in the order of definition."""
    pkg = importlib.import_module(package)
    found: list[type[BaseModel]] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.ispkg:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseModel)
                    and value.__module__ == module.__name__
                    and not value.__dict__.get("__abstract__", False)):
                found.append(value)
    return found
