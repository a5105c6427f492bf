"""`run.py install-link`: print the install link to put on your site, and what it leads to.

The Stripe link is shown as `GET /install` builds it (`service.install.install_link`), with
`STATE` where each browser gets a fresh state. No database is needed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

from service.config import Config
from service.install import install_link


def add_parser(sub: Any) -> None:
    sub.add_parser("install-link", help="print the install link to put on your site"
                   ).set_defaults(func=run_install_link)


def run_install_link(config: Config, args: argparse.Namespace) -> int:
    parts = urlsplit(config.install_redirect_uri)
    start = f"{parts.scheme}://{parts.netloc}/install"
    if not config.app_id:
        print("STRIPE_APP_ID is not set: the install link needs the app's id", file=sys.stderr)
        return 1
    print(f"Put this link on your site: {start}")
    print("It sends the browser to the Stripe install page with a fresh, single-use STATE:")
    print("  " + install_link(config.app_id, config.install_redirect_uri, "STATE"))
    print(f"Stripe sends the browser back to {config.install_redirect_uri}, which must be listed "
          "in your app manifest's allowed_redirect_uris (https in live mode).")
    return 0
