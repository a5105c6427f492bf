"""`run.py migrate` and `run.py makemigration NAME`: the database schema, without a server.

`migrate` applies the project's migrations, then the app's (`models/migrate.py`; the app is
`APP_PACKAGES` or `run.py --app`, else the example app), as start-up does.
`makemigration NAME` writes the next migration of the app when one is named (`APP_PACKAGES` or
`--app`), into that app's `migrations/` folder from the app's own models; with no app named, the
project's own, into `models/migrations/`. Several apps named: `--app` picks the one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from models.migrate import app_schema, make_migration, migrate
from service.config import Config, app_packages
from service.services import open_configured_database


def add_parser(sub: Any) -> None:
    sub.add_parser("migrate", help="bring the database schema up to date (the project's "
                   "migrations, then the app's)").set_defaults(func=run_migrate)
    mk = sub.add_parser("makemigration", help="write a migration for model changes: the "
                        "app's, into its migrations/ folder, when an app is named (--app, "
                        "APP_PACKAGES); the project's otherwise")
    mk.add_argument("name")
    mk.set_defaults(func=run_makemigration)


def run_migrate(config: Config, args: argparse.Namespace) -> int:
    applied = migrate(open_configured_database(config), apps=app_packages(config))
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def _shown(path: str) -> str:
    """`path` relative to the current directory when it is below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def run_makemigration(config: Config, args: argparse.Namespace) -> int:
    named = config.app_packages
    if len(named) > 1:
        print(f"several apps are named ({', '.join(named)}): name the one to write a "
              "migration for with `run.py --app APP makemigration NAME`", file=sys.stderr)
        return 2
    schema = app_schema(named[0]) if named else None
    if schema is not None and schema.migrate_dir is None:
        print(f"{named[0]} is a module, not a package: an app with tables is a package (a "
              "folder with __init__.py), whose migrations/ folder holds their migrations",
              file=sys.stderr)
        return 2
    db = open_configured_database(config)
    migrate(db, apps=app_packages(config))
    if schema is None or schema.migrate_dir is None:
        name = make_migration(db, args.name)
        folder = os.path.join("models", "migrations")
    else:
        name = make_migration(db, args.name, app=schema)
        folder = _shown(schema.migrate_dir)
    print(f"wrote {os.path.join(folder, name)}.py" if name else "no model changes found")
    return 0
