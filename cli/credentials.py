"""`run.py credentials rotate`: re-encrypt every stored credential under the first key.

Rotating a key: put a new key first in `CREDENTIALS_KEYS` and keep the old one after it
(`CREDENTIALS_KEYS=<new>,<old>`), restart, run `python run.py credentials rotate`, then remove
the old key. Until the rotation, every key decrypts; after it, the first key alone reads
everything. Values are never printed, only counts and the `account/mode/name` of a value no
configured key can read (it is left as it was; the command then exits 1).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.config import Config


def add_parser(sub: Any) -> None:
    creds = sub.add_parser("credentials", help="manage the credentials vault")
    csub = creds.add_subparsers(dest="credentials_command", metavar="action", required=True)
    rot = csub.add_parser("rotate", help="re-encrypt every credential under the first key of "
                          "CREDENTIALS_KEYS")
    rot.set_defaults(func=rotate)


def rotate(config: Config, args: argparse.Namespace) -> int:
    from jobs.credentials import Cipher
    from models.credentials import rotate_all
    from models.migrate import migrate
    from service.services import open_configured_database

    if not config.credentials_keys:
        print("CREDENTIALS_KEYS is not set: there is no key to rotate to", file=sys.stderr)
        return 2
    db = open_configured_database(config)
    try:
        migrate(db)
        done, unreadable = rotate_all(Cipher(config.credentials_keys).rotate)
    finally:
        db.close()
    keys = len(config.credentials_keys)
    print(f"re-encrypted {done} credentials under the first of {keys} keys")
    if unreadable:
        print(f"{len(unreadable)} credentials no key in CREDENTIALS_KEYS decrypts (left as "
              "they were):", file=sys.stderr)
        for where in unreadable:
            print(f"  {where}", file=sys.stderr)
        return 1
    return 0
