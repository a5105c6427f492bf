"""`run.py migrate` and `run.py makemigration NAME`: the database schema, without a server.

`migrate` applies the project's migrations, then each app's (`models/migrate.py`).
`makemigration NAME` writes the next migration of the app when one is named (`--app` after
the command, else the app setting: `APP_PACKAGES`, or `run.py --app`), into that app's
`migrations/` folder from its own models; with no app named, the project's own, into
`models/migrations/`. Several apps named: `--app` picks the one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from models.migrate import app_schema, make_migration, migrate
from service.config import Config
from service.services import open_configured_database


def add_parser(sub: Any) -> None:
    sub.add_parser("migrate", help="bring the database schema up to date (the project's "
                   "migrations, then the app's)").set_defaults(func=run_migrate)
    mk = sub.add_parser("makemigration", help="write a migration for model changes (the "
                        "app's, into its migrations/ folder, when an app is named)")
    mk.add_argument("name")
    mk.add_argument("--app", dest="migration_app", metavar="APP",
                    help="the app (a package name or directory) whose models and migrations "
                         "folder to use (default: the one APP_PACKAGES names; none: the "
                         "project's own)")
    mk.set_defaults(func=run_makemigration)


def named_apps(config: Config) -> tuple[str, ...]:
    """The apps the configuration names (`APP_PACKAGES`, `--app`); none when it names none."""
    return tuple(getattr(config, "app_packages", ()) or ())


def run_migrate(config: Config, args: argparse.Namespace) -> int:
    applied = migrate(open_configured_database(config), apps=named_apps(config))
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def run_makemigration(config: Config, args: argparse.Namespace) -> int:
    apps = named_apps(config)
    app: str | None = args.migration_app
    if app is None and len(apps) > 1:
        print(f"several apps are named ({', '.join(apps)}): say which with "
              "`makemigration NAME --app APP`", file=sys.stderr)
        return 2
    if app is None and apps:
        app = apps[0]
    db = open_configured_database(config)
    schema = app_schema(app) if app is not None else None
    migrate(db, apps=[*apps, *([schema] if schema and app not in apps else [])])
    name = make_migration(db, args.name, app=schema)
    folder = os.path.relpath(schema.migrate_dir) if schema else "models/migrations"
    print(f"wrote {os.path.join(folder, name)}.py" if name else "no model changes found")
    return 0
