"""Playing Stripe's part, for `run.py simulate`, the tests and the benchmarks (one copy of each).

- `sign(payload, secret)`: a `Stripe-Signature` header, made by the stripe library;
- `make_event(type, account, livemode)`: a webhook event shaped as Stripe sends it, about an
  object of the type's kind (`event_object`: a customer for `customer.created`);
- `compact(value)`: JSON without spaces, as the UI extension's signed requests send it;
- `free_port()`: a free TCP port on the loopback interface;
- `start_child(...)` / `exit_with_parent()`: a loopback server of ours as a child process that
  exits when its parent does, however the parent ends (even by SIGKILL);
- `add_mode_options(parser)` / `chosen_mode(args)`: the CLI's `--live`, `--test`, `--sandbox`
  (one of them; live when none is given).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import stripe

from models.enums import Mode


def add_mode_options(parser: Any) -> None:
    """`--live`, `--test` and `--sandbox` on `parser`, one of them at most, as `args.mode` (None
    when none is given: `chosen_mode` is then live)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--live", dest="mode", action="store_const", const=Mode.LIVE, default=None,
                       help="live mode (the default)")
    group.add_argument("--test", dest="mode", action="store_const", const=Mode.TEST,
                       help="test mode (default: live)")
    group.add_argument("--sandbox", dest="mode", action="store_const", const=Mode.SANDBOX,
                       help="a sandbox install, served by the managed sandbox "
                            "(STRIPE_SECRET_KEY_SANDBOX, STRIPE_WEBHOOK_SECRETS_SANDBOX)")


def chosen_mode(args: Any) -> Mode:
    """The mode `add_mode_options` read: live when none was given."""
    return Mode(args.mode) if args.mode else Mode.LIVE


def sign(payload: str | bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `payload` (at `timestamp`, now by default)."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def new_event_id() -> str:
    return "evt_sim" + secrets.token_hex(12)


def make_event(type_: str, account: str | None = None, livemode: bool = True, *,
               created: int | None = None, event_id: str | None = None,
               obj: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event of `type_` for `account` (None: the platform's own), created now unless
    `created`, about `obj` (by default `event_object(type_, account)`)."""
    return {
        "id": event_id or new_event_id(), "object": "event", "api_version": "2024-06-20",
        "account": account, "created": created or int(time.time()), "livemode": livemode,
        "data": {"object": obj or event_object(type_, account)},
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "type": type_,
    }


#: The object an event type is about, when it is not the type's first segment: the longest
#: matching prefix wins. `customer.subscription.created` is about a subscription, not a
#: customer; namespaced objects (`checkout.session`) keep their dot.
_EVENT_OBJECTS: dict[str, str] = {
    "account.application.": "application",
    "account.external_account.": "bank_account",
    "customer.subscription.": "subscription",
    "customer.discount.": "discount",
    "customer.source.": "card",
    "customer.tax_id.": "tax_id",
    "charge.dispute.": "dispute",
    "charge.refund.": "refund",
    "issuing_authorization.": "issuing.authorization",
    "issuing_card.": "issuing.card",
    "issuing_cardholder.": "issuing.cardholder",
    "issuing_dispute.": "issuing.dispute",
    "issuing_transaction.": "issuing.transaction",
}

#: Namespaces whose objects are named by the first two segments (`checkout.session.completed`).
_NAMESPACES = ("billing", "billing_portal", "checkout", "climate", "entitlements",
               "financial_connections", "identity", "radar", "reporting", "sigma", "tax",
               "terminal", "test_helpers", "treasury")

#: Id prefixes Stripe gives common objects (another object's id is `<object>_sim...`).
_ID_PREFIXES: dict[str, str] = {
    "account": "acct", "application": "ca", "application_fee": "fee", "bank_account": "ba",
    "card": "card", "charge": "ch", "checkout.session": "cs", "coupon": "co",
    "credit_note": "cn", "customer": "cus", "dispute": "dp", "file": "file", "invoice": "in",
    "invoiceitem": "ii", "mandate": "mandate", "payment_intent": "pi", "payment_link": "plink",
    "payment_method": "pm", "payout": "po", "person": "person", "plan": "plan",
    "price": "price", "product": "prod", "promotion_code": "promo", "quote": "qt",
    "refund": "re", "review": "prv", "setup_intent": "seti", "source": "src",
    "subscription": "sub", "subscription_schedule": "sub_sched", "tax_id": "txi",
    "tax_rate": "txr", "topup": "tu", "transfer": "tr",
}


def event_object_name(type_: str) -> str:
    """The `object` an event of `type_` carries in `data.object`: by Stripe's naming, the
    type's first segment (`customer.created`: a customer), but for the prefixes in
    `_EVENT_OBJECTS` and the namespaces in `_NAMESPACES`."""
    for prefix in sorted(_EVENT_OBJECTS, key=len, reverse=True):
        if type_.startswith(prefix):
            return _EVENT_OBJECTS[prefix]
    parts = type_.split(".")
    if len(parts) > 2 and parts[0] in _NAMESPACES:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def event_object(type_: str, account: str | None = None) -> dict[str, Any]:
    """A minimal `data.object` for an event of `type_`: its id and `object`, as Stripe would
    send them (`{"id": "cus_sim...", "object": "customer"}` for `customer.created`); the app
    itself for `account.application.*`, the account for `account.*`, no id for a balance."""
    name = event_object_name(type_)
    if name == "application":
        return {"id": "ca_simulated", "object": "application"}
    if name == "account":
        return {"id": account or "acct_simulated", "object": "account"}
    if name == "balance":
        return {"object": "balance", "available": [], "pending": []}
    prefix = _ID_PREFIXES.get(name, name.replace(".", "_"))
    return {"id": f"{prefix}_sim{secrets.token_hex(8)}", "object": name}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_child(module: str, args: list[str], what: str,
                timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m <module> <args> --exit-with-parent` (a loopback server of this project
    that prints the port it bound as its first line) and wait until it answers; returns it and
    its base URL. Its stdin is a pipe from this process: when this process ends, by any means,
    the pipe closes and the child exits (`exit_with_parent`), so no server is left orphaned.

    Raises RuntimeError naming `what` when it does not start or does not answer in time."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", module, *args, PARENT_FLAG], cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line.isdigit():
        url = f"http://127.0.0.1:{line}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(0.3)
                if s.connect_ex(("127.0.0.1", int(line))) == 0:
                    return proc, url
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"{what} did not start" if not line.isdigit()
                       else f"{what} did not answer at http://127.0.0.1:{line}")


#: The flag `start_child` gives its child: "stdin is a pipe from your parent; exit at its EOF".
PARENT_FLAG = "--exit-with-parent"


def exit_with_parent() -> None:
    """In a child started by `start_child`: end this process as soon as stdin reaches EOF, that
    is when the parent has exited or been killed (the kernel closes its end of the pipe). A
    thread waits on the pipe; `os._exit` because the servers write their state on each change,
    so there is nothing left to flush."""
    def wait() -> None:
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(4096):
                pass
        os._exit(0)

    threading.Thread(target=wait, name="exit-with-parent", daemon=True).start()


class JSONFileError(ValueError):
    """A file that should hold a JSON object cannot be read as one; the message says why."""


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in the file at `path`, or `JSONFileError` saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as exc:
        raise JSONFileError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise JSONFileError(f"{path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JSONFileError(f"{path} is not a JSON object")
    return value
