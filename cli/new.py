"""`run.py new PATH`: write a new app package at PATH, ready to serve and to test.

The package's name is PATH's last part, which must be a Python identifier (lower case, so it
can name a table and a URL: `[a-z_][a-z0-9_]*`), and PATH must not be a non-empty folder; else
the command writes nothing, says why on stderr and exits 2. It writes the files of
`cli/app_template/` (package data: an installed copy and the one-file build carry them), with
`{{app}}` replaced by the name:

    PATH/__init__.py                the package, and what it holds
    PATH/notes.py                   one table (an AccountModel), one signed endpoint, one event
                                    handler, one job and one task
    PATH/migrations/001_initial.py  the table's first migration (peewee-migrate's form)
    PATH/tests/test_notes.py        tests that pass at once, with the test kit
                                    (stripe_app_backend.testing)
    PATH/README.md                  five lines: what it is, how to serve, test and type-check it
    PATH/mypy.ini                   mypy strict, as the backend checks its own code

and prints what to run next. `mypy --config-file PATH/mypy.ini PATH` passes on what it writes
(strict; the config reads peewee as untyped, as the backend's does, and finds the backend's
source, where an editable install keeps `stripe_app_backend`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

#: The template's folder, beside this module (package data in setup.cfg).
TEMPLATE = Path(__file__).resolve().parent / "app_template"
SUFFIX = ".tmpl"
#: A package name that can also be a table prefix and a URL segment.
NAME = re.compile(r"[a-z_][a-z0-9_]*")


class NewAppError(ValueError):
    """PATH cannot take a new app; the message says why, for a person."""


def add_parser(sub: Any) -> None:
    new = sub.add_parser("new", help="write a new app package at PATH (a job, an event "
                                     "handler, a task, an endpoint, a table and their tests)")
    new.add_argument("path", metavar="PATH",
                     help="the package folder to create; its last part is the package name")
    new.set_defaults(func=run_new, takes_bad_config=True)


def _python() -> str:
    """The interpreter the README's commands name: this one, unless frozen (the one-file
    build, which cannot run tests), then `python`."""
    return "python" if getattr(sys, "frozen", False) else sys.executable


def files(name: str, path: Path) -> dict[Path, str]:
    """What the package at `path`, named `name`, consists of: its files' paths (relative to
    `path`) and contents."""
    root = Path(__file__).resolve().parent.parent
    values = {"{{app}}": name, "{{path}}": str(path), "{{python}}": _python(),
              "{{root}}": str(root)}
    out: dict[Path, str] = {}
    for source in sorted(TEMPLATE.rglob("*" + SUFFIX)):
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        out[source.relative_to(TEMPLATE).with_name(source.name[:-len(SUFFIX)])] = text
    return out


def check_target(path: Path) -> str:
    """The package name PATH gives, or `NewAppError` saying why it cannot take a new app."""
    name = path.name
    if not NAME.fullmatch(name) or not name.isidentifier():
        raise NewAppError(f"{name!r} cannot name a Python package: use lower-case letters, "
                          "digits and underscores, not starting with a digit (e.g. acme_app)")
    if name in sys.builtin_module_names or name in sys.stdlib_module_names:
        raise NewAppError(f"{name!r} is the name of a module of Python's own; choose another")
    if path.exists() and not path.is_dir():
        raise NewAppError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise NewAppError(f"{path} exists and is not empty; give a new folder")
    return name


def write_app(path: Path) -> list[Path]:
    """Write the new app at `path` (see the module doc); the files written."""
    path = Path(os.path.abspath(path))
    name = check_target(path)
    written = []
    for relative, text in files(name, path).items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def run_new(config: Any, args: argparse.Namespace) -> int:
    try:
        written = write_app(Path(args.path))
    except NewAppError as exc:
        print(f"run.py new: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"run.py new: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
        return 2
    package = Path(os.path.abspath(args.path))
    print(f"wrote the app {package.name} at {package} ({len(written)} files); next:")
    print(f"  {_python()} -m pytest {package}/tests")
    print(f"  APP_PACKAGES={package} {_python()} run.py dev")
    return 0
