"""`run.py install-link`: print the install link to put on your site, and what it leads to."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

from models.db import open_database
from models.migrate import migrate
from service.config import Config


def add_parser(sub: Any) -> None:
    sub.add_parser("install-link", help="print the install link to put on your site"
                   ).set_defaults(func=run_install_link)


def run_install_link(config: Config, args: argparse.Namespace) -> int:
    migrate(open_database(config.database_url))
    parts = urlsplit(config.install_redirect_uri)
    start = f"{parts.scheme}://{parts.netloc}/install"
    if not config.app_id:
        print("STRIPE_APP_ID is not set: the install link needs the app's id", file=sys.stderr)
        return 1
    print(f"Put this link on your site: {start}")
    print("It sends the browser to the Stripe install page with a fresh, single-use state:")
    print(f"  https://marketplace.stripe.com/apps/install/link/{config.app_id}"
          f"?redirect_uri={config.install_redirect_uri}&state=<fresh state>")
    print(f"Stripe sends the browser back to {config.install_redirect_uri}, which must be listed "
          "in your app manifest's allowed_redirect_uris (https in live mode).")
    return 0
