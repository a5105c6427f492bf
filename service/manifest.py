"""The `stripe-app.json` fragment this backend needs, and what an existing manifest lacks of it.

    fragment = manifest_fragment(config, registry)     # a dict, ready for json.dumps
    missing = missing_from(existing, fragment)          # human lines, empty when complete

The fragment has three parts (Stripe's app manifest keys), and a fourth when sandbox installs
are served:
- `ui_extension.content_security_policy.connect-src`: `PUBLIC_URL/api/`, so the extension may
  call the signed endpoints;
- `allowed_redirect_uris`: the install callback (`STRIPE_INSTALL_REDIRECT_URI`);
- `permissions`: each `{"permission", "purpose"}` that the declared jobs (and tasks, when the
  registry has them) ask for with `permissions=[...]`, plus `event_read` and the read permission
  of each event type an `@on_event` handler needs, in a stable order;
- `sandbox_install_compatible: true` when the managed sandbox is configured
  (`config.sandbox_configured`: `STRIPE_SECRET_KEY_SANDBOX` or `STRIPE_WEBHOOK_SECRETS_SANDBOX`
  set), so that users may install the app in their sandboxes; absent otherwise (Stripe's
  default, false: such installs would reach a backend that cannot serve them).

`webhook_event_types(registry)` is the list to subscribe the webhook endpoint to: the install
lifecycle events this backend always handles, plus every `@on_event` type.

The permission an event type needs follows Stripe's rule of thumb (the object's `<name>_read`):
known exceptions are in `_EVENT_PERMISSIONS`; for a type not there the guess is the first part of
the type plus `_read`, which `run.py manifest` says, so the developer can check it against
Stripe's permissions reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs.events import AUTHORIZED, DEAUTHORIZED
from jobs.installs import INSTALL_EVENTS
from jobs.registry import Registry
from service.config import Config

#: Events the backend handles itself, whatever the jobs declare: the install lifecycle.
LIFECYCLE_EVENTS: tuple[str, ...] = (AUTHORIZED, DEAUTHORIZED, *INSTALL_EVENTS)

#: Event-type prefixes whose permission is not simply `<first part>_read`, longest first wins.
_EVENT_PERMISSIONS: Mapping[str, str] = {
    "customer.subscription.": "subscription_read",
    "customer.source.": "customer_read",
    "customer.tax_id.": "customer_read",
    "charge.dispute.": "dispute_read",
    "charge.refund.": "refund_read",
    "checkout.session.": "checkout_session_read",
    "invoiceitem.": "invoice_read",
    "invoice_payment.": "invoice_read",
    "payment_method.": "payment_method_read",
    "payment_intent.": "payment_intent_read",
    "setup_intent.": "setup_intent_read",
    "subscription_schedule.": "subscription_read",
    "tax_rate.": "tax_rate_read",
    "promotion_code.": "promotion_code_read",
    "credit_note.": "credit_note_read",
    "application_fee.": "application_fee_read",
    "balance.": "balance_read",
    "payout.": "payout_read",
    "transfer.": "transfer_read",
}

#: The first parts whose `<part>_read` is a Stripe permission name as it stands.
_PLAIN = {"customer", "charge", "invoice", "price", "product", "plan", "coupon", "refund",
          "file", "mandate", "order", "quote", "review", "source", "topup", "dispute"}


@dataclass(frozen=True)
class Need:
    """One permission and why the backend needs it (the manifest's `purpose`)."""

    permission: str
    purpose: str
    guessed: bool = False  # derived from an event type by rule, not known


def event_permission(event_type: str) -> tuple[str, bool]:
    """The permission `event_type` needs, and whether it is a guess by rule."""
    for prefix in sorted(_EVENT_PERMISSIONS, key=len, reverse=True):
        if event_type == prefix or event_type.startswith(prefix):
            return _EVENT_PERMISSIONS[prefix], False
    first = event_type.split(".", 1)[0]
    return f"{first}_read", first not in _PLAIN


def webhook_event_types(registry: Registry) -> list[str]:
    """The types to subscribe the webhook endpoint to: lifecycle events, then each handled one."""
    handled = sorted(t for t in registry.handlers if t not in LIFECYCLE_EVENTS)
    return [*LIFECYCLE_EVENTS, *handled]


def _declared(registry: Registry) -> Iterable[tuple[str, str, str, tuple[str, ...]]]:
    """(kind, name, description, permissions) of every job and, when present, task."""
    for name, spec in sorted(registry.jobs.items()):
        yield "job", name, spec.description, tuple(spec.permissions)
    tasks: Mapping[str, Any] = getattr(registry, "tasks", None) or {}
    for name, spec in sorted(tasks.items()):
        yield ("task", name, str(getattr(spec, "description", "") or ""),
               tuple(getattr(spec, "permissions", ()) or ()))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def permission_needs(registry: Registry) -> list[Need]:
    """Every permission the declared jobs, tasks and event handlers need, sorted by name."""
    users: dict[str, list[str]] = {}
    guessed: set[str] = set()
    for kind, name, description, permissions in _declared(registry):
        what = f"the {kind} {name}" + (f" ({description.rstrip('.')})" if description else "")
        for permission in permissions:
            users.setdefault(permission, []).append(what)
    events = [t for t in webhook_event_types(registry) if t not in LIFECYCLE_EVENTS]
    if events:
        users.setdefault("event_read", []).append(
            "receiving webhook events from the accounts that install the app")
    for event_type in events:
        permission, guess = event_permission(event_type)
        users.setdefault(permission, []).append(f"{event_type} events")
        if guess:
            guessed.add(permission)
    return [
        Need(permission, f"Used by {_join(list(dict.fromkeys(whats)))}.", permission in guessed)
        for permission, whats in sorted(users.items())
    ]


def connect_src(config: Config) -> str:
    return f"{config.public_url}/api/"


#: The manifest key that lets users install the app in their sandboxes.
SANDBOX_KEY = "sandbox_install_compatible"


def manifest_fragment(config: Config, registry: Registry) -> dict[str, Any]:
    """The part of `stripe-app.json` this backend needs, as Stripe's manifest spells it."""
    fragment: dict[str, Any] = {
        "permissions": [{"permission": n.permission, "purpose": n.purpose}
                        for n in permission_needs(registry)],
        "ui_extension": {
            "content_security_policy": {
                "connect-src": [connect_src(config)],
                "purpose": "Calls this app's backend, which verifies each request's signature.",
            },
        },
        "allowed_redirect_uris": [config.install_redirect_uri],
    }
    if config.sandbox_configured:
        fragment[SANDBOX_KEY] = True
    return fragment


def _covers(source: str, url: str) -> bool:
    """Whether a `connect-src` entry allows `url`: the same URL, or a prefix ending in `/`."""
    return source == url or (source.endswith("/") and url.startswith(source))


def missing_from(existing: Mapping[str, Any], fragment: Mapping[str, Any]) -> list[str]:
    """One line per thing `fragment` has that the manifest `existing` lacks (empty: complete)."""
    lines: list[str] = []
    have = {p.get("permission") for p in existing.get("permissions") or []
            if isinstance(p, dict)}
    for need in fragment["permissions"]:
        if need["permission"] not in have:
            lines.append(f"permissions: {need['permission']} (purpose: {need['purpose']})")
    ui = existing.get("ui_extension") or {}
    csp = (ui.get("content_security_policy") or {}) if isinstance(ui, dict) else {}
    sources = (csp.get("connect-src") or []) if isinstance(csp, dict) else []
    for url in fragment["ui_extension"]["content_security_policy"]["connect-src"]:
        if not any(isinstance(s, str) and _covers(s, url) for s in sources):
            lines.append(f"ui_extension.content_security_policy.connect-src: {url}")
    redirects = existing.get("allowed_redirect_uris") or []
    for uri in fragment["allowed_redirect_uris"]:
        if uri not in redirects:
            lines.append(f"allowed_redirect_uris: {uri}")
    if fragment.get(SANDBOX_KEY) is True and existing.get(SANDBOX_KEY) is not True:
        lines.append(f"{SANDBOX_KEY}: true")
    return lines
