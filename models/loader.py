"""The one walk over the code the backend derives things from: import every module of a list
of packages, once, and hand the modules to whoever collects what they declare.

    modules = load_modules()                          # DEFAULT_PACKAGES
    modules = load_modules(with_apps(app_packages(config)))   # the project's, then the app's
    modules = load_modules(["acme_app", "/srv/apps/billing_app"])

    Registry.from_modules(modules)         # jobs, event handlers, tasks, endpoints (jobs/registry)
    OAuthProviders.from_modules(modules)   # OAuth providers (jobs/oauth)
    models_of(modules)                     # tables: migrations, uninstall cleanup (models/base)

An entry is an importable package name (`acme_app`), or, when it holds a `/`, the path of a
package directory, whose parent folder joins `sys.path` so that it imports under its own name.
An entry may also name a plain module. Each package yields itself, then every module of it and
of its subpackages, by name; a subpackage named `migrations` (files the migrator reads) or
`tests` (which import the test tools) is not imported. The packages come in the order given; a
module two entries reach is yielded once.

A module that cannot be imported, for any reason (a syntax error, a missing dependency, a
decorator refusing its arguments), raises `LoadError` naming that module, with the original
error as its cause: start-up stops there rather than running without part of the app.

Names only, no imports of `jobs/` or `service/`: this module is below both, and what the
packages declare is collected by the layer that knows the declaration. Python's module cache
makes a second walk cheap and returns the same modules (and so the same declarations).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType

#: The project's own packages, walked before any app's.
PROJECT_PACKAGES: tuple[str, ...] = ("models", "jobs")
#: What the backend walks when no app is named: its own jobs and models, and the shipped
#: example app.
DEFAULT_PACKAGES: tuple[str, ...] = (*PROJECT_PACKAGES, "example_app")
#: Subpackages that hold no declarations and must not be imported at start-up.
SKIPPED = frozenset({"migrations", "tests"})


class LoadError(ImportError):
    """A module of the app could not be imported; `name` is that module."""


def load_modules(packages: Iterable[str] = DEFAULT_PACKAGES) -> tuple[ModuleType, ...]:
    """Every module of `packages`, imported (see the module doc for the order and what is
    skipped); raises `LoadError` naming the module that failed. A lone string is one entry."""
    if isinstance(packages, str):  # not its letters
        packages = (packages,)
    seen: dict[str, ModuleType] = {}
    for entry in packages:
        for module in _walk(_import(_name_of(entry))):
            seen.setdefault(module.__name__, module)
    return tuple(seen.values())


def with_apps(apps: Iterable[str]) -> tuple[str, ...]:
    """The packages to walk for an app: the project's own, then the app's entries (the
    effective app list is `service.config.app_packages(config)`)."""
    return (*PROJECT_PACKAGES, *((apps,) if isinstance(apps, str) else apps))


def _name_of(entry: str) -> str:
    """The importable name of an entry; a path's parent joins `sys.path`."""
    entry = entry.strip()
    if "/" not in entry and os.sep not in entry:
        return entry
    path = os.path.abspath(os.path.expanduser(entry)).rstrip(os.sep)
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise LoadError(f"{entry}: not a package directory (no __init__.py)", name=entry)
    parent, name = os.path.split(path)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return name


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise LoadError(f"cannot import {name}: {type(exc).__name__}: {exc}",
                        name=name) from exc


def _walk(module: ModuleType) -> Iterator[ModuleType]:
    yield module
    path = getattr(module, "__path__", None)
    if path is None:  # a plain module
        return
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if info.ispkg and info.name in SKIPPED:
            continue
        yield from _walk(_import(f"{module.__name__}.{info.name}"))
