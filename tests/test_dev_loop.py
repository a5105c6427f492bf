"""The developer's loop as a newcomer runs it from the README (issue 24): `run.py dev` on a
port of one's own, `run.py simulate` and the `--dev` commands in a second shell, and what each
shows. Real processes on loopback, as in test_e2e.py."""

from __future__ import annotations

import json

from conftest import free_port
from test_e2e import cli

from cli.devtools import event_object, make_event


def test_a_simulated_event_is_about_an_object_of_its_type():
    """`simulate event TYPE` sends a `data.object` of the type's kind, named by the type's first
    segment (or by Stripe's exceptions), not the application."""
    expected = {
        "customer.created": ("customer", "cus_"),
        "invoice.paid": ("invoice", "in_"),
        "payment_intent.succeeded": ("payment_intent", "pi_"),
        "charge.refunded": ("charge", "ch_"),
        "customer.subscription.created": ("subscription", "sub_"),
        "checkout.session.completed": ("checkout.session", "cs_"),
        "product.updated": ("product", "prod_"),
        "widget.frobbed": ("widget", "widget_"),
    }
    for type_, (name, prefix) in expected.items():
        obj = make_event(type_, "acct_demo", False)["data"]["object"]
        assert obj["object"] == name, type_
        assert obj["id"].startswith(prefix) and len(obj["id"]) > len(prefix) + 8, type_
    # the install lifecycle keeps the app itself; an account event is about the account
    assert event_object("account.application.authorized")["object"] == "application"
    assert event_object("account.updated", "acct_demo") == {"id": "acct_demo",
                                                            "object": "account"}
    assert event_object("balance.available")["object"] == "balance"


def test_simulate_event_sends_the_typed_object(tmp_path):
    out = cli(tmp_path, "simulate", "event", "invoice.paid", "--account", "acct_demo", "--test",
              PORT=str(free_port()), STRIPE_WEBHOOK_SECRETS_TEST="whsec_x" + "2" * 20)
    assert out.returncode == 3, out.stderr  # nothing listens: what was sent is shown first
    sent = json.loads(out.stdout.split("-> POST /webhooks:\n", 1)[1].split("\n}\n", 1)[0] + "}")
    assert sent["type"] == "invoice.paid" and sent["account"] == "acct_demo"
    assert sent["data"]["object"]["object"] == "invoice"
    assert sent["data"]["object"]["id"].startswith("in_")
