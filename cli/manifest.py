"""`run.py manifest [--check FILE]`: the `stripe-app.json` fragment this backend needs.

Without `--check` it prints the fragment as JSON on stdout (ready to paste into the app's
manifest), and on stderr what to do with it: the webhook events to subscribe to (and, when the
managed sandbox is configured, that its own endpoints need the same), and any permission that
was guessed from an event type or a non-https `PUBLIC_URL`.
With `--check FILE` it reads an existing manifest and prints one line per missing entry;
exit 1 when anything is missing, 2 when the file cannot be read as a JSON object.
The content is computed by `service/manifest.py` from the configuration and the job registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.devtools import JSONFileError, read_json_object
from jobs.installs import INSTALL_EVENTS
from jobs.registry import Registry
from service.config import Config
from service.manifest import manifest_fragment, missing_from, permission_needs, webhook_event_types
from service.services import app_registry


def add_parser(sub: Any) -> None:
    man = sub.add_parser("manifest", help="print the stripe-app.json fragment this backend needs")
    man.add_argument("--check", metavar="FILE",
                     help="compare an existing stripe-app.json and list what it lacks")
    man.set_defaults(func=run_manifest)


def _notes(config: Config, registry: Registry) -> list[str]:
    # apps.install.* are sent to the app developer's own account, the rest by connected ones:
    # two endpoints at one URL (docs/deploy.md, "Which events to subscribe")
    connected = [t for t in webhook_event_types(registry) if t not in INSTALL_EVENTS]
    lines = [f"Webhook endpoint 1: {config.public_url}/webhooks, listening to events on "
             "connected accounts, subscribed to: " + ", ".join(connected),
             f"Webhook endpoint 2: {config.public_url}/webhooks, listening to events on your "
             "own account, subscribed to: " + ", ".join(INSTALL_EVENTS)]
    if config.sandbox_configured:
        lines.append("Sandbox installs: create both endpoints again in your managed sandbox "
                     "(with its key), and set their signing secrets in "
                     "STRIPE_WEBHOOK_SECRETS_SANDBOX")
    for need in permission_needs(registry):
        if need.guessed:
            lines.append(f"{need.permission}: derived from the event type; check the name in "
                         "Stripe's permissions reference")
    if not config.public_url.startswith("https://"):
        lines.append(f"PUBLIC_URL is {config.public_url}: set it to the backend's https address "
                     "before uploading the app")
    return lines


class ManifestFileError(Exception):
    """The manifest to check cannot be read as a JSON object; the message says why."""


def _read(path: str) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except JSONFileError as exc:
        raise ManifestFileError(str(exc)) from None


def run_manifest(config: Config, args: argparse.Namespace) -> int:
    registry = app_registry(config)  # the project's and the app's declarations
    fragment = manifest_fragment(config, registry)
    if args.check is None:
        print(json.dumps(fragment, indent=2, ensure_ascii=False))
        for line in _notes(config, registry):
            print(line, file=sys.stderr)
        return 0
    try:
        existing = _read(args.check)
    except ManifestFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    missing = missing_from(existing, fragment)
    for line in missing:
        print(f"missing {line}")
    if missing:
        print(f"{args.check} lacks {len(missing)} entr{'y' if len(missing) == 1 else 'ies'}; "
              "`run.py manifest` prints them all", file=sys.stderr)
        return 1
    print(f"{args.check} has everything this backend needs")
    return 0
