"""The model base classes, and the discovery of every model.

`BaseModel` binds a table to the deferred database. `AccountModel` is the base for app data that
belongs to one connected account in one mode: when an account uninstalls the app in a mode,
every `AccountModel` table loses that account's rows in that mode (the installation record and
the event audit trail stay).

`models_of(modules)` picks the models out of the modules the loader imported
(`models/loader.py`), and `discover_models()` is the two together for the default packages, so
a table added in a new module is migrated and cleaned up on uninstall without being imported or
listed anywhere (as `Registry.from_modules()` does for jobs). A base class meant only to be
subclassed sets `__abstract__ = True` in its body and is not a table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import ModuleType

import peewee as pw

from models.db import database
from models.enums import MODE_LENGTH
from models.loader import DEFAULT_PACKAGES, load_modules


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
    mode = pw.CharField(max_length=MODE_LENGTH)  # a Mode: "live", "test" or "sandbox"

    @classmethod
    def delete_account_data(cls, account_id: str, mode: str,
                            models: Iterable[type[BaseModel]] | None = None) -> int:
        """Delete this account's rows in `mode` from every AccountModel table; return the count.

        The tables are those of `models`, by default of `discover_models()`, whether or not
        anything imported them.
        """
        deleted = 0
        for model in discover_models() if models is None else models:
            if issubclass(model, cls):
                deleted += (
                    model.delete()
                    .where((model.account_id == account_id) & (model.mode == mode))
                    .execute()
                )
        return deleted


def models_of(modules: Iterable[ModuleType]) -> list[type[BaseModel]]:
    """The concrete models defined in `modules` (a model imported into a module counts only
    where it is defined), in the order of the modules, then of definition."""
    found: list[type[BaseModel]] = []
    for module in modules:
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseModel)
                    and value.__module__ == module.__name__
                    and not value.__dict__.get("__abstract__", False)):
                found.append(value)
    return found


def discover_models(packages: Iterable[str] = DEFAULT_PACKAGES) -> list[type[BaseModel]]:
    """The models of `packages`, as `load_modules` walks them (migrations are not imported)."""
    return models_of(load_modules(packages))
