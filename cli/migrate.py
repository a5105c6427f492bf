"""`run.py migrate` and `run.py makemigration NAME`: the database schema, without a server."""

from __future__ import annotations

import argparse
from typing import Any

from models.migrate import make_migration, migrate
from service.config import Config
from service.services import open_configured_database


def add_parser(sub: Any) -> None:
    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(
        func=run_migrate)
    mk = sub.add_parser("makemigration", help="write a migration for model changes")
    mk.add_argument("name")
    mk.set_defaults(func=run_makemigration)


def run_migrate(config: Config, args: argparse.Namespace) -> int:
    applied = migrate(open_configured_database(config))
    print("applied: " + ", ".join(applied) if applied else "the database is up to date")
    return 0


def run_makemigration(config: Config, args: argparse.Namespace) -> int:
    db = open_configured_database(config)
    migrate(db)
    name = make_migration(db, args.name)
    print(f"wrote models/migrations/{name}.py" if name else "no model changes found")
    return 0
