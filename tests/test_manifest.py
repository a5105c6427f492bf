"""`run.py manifest`: the stripe-app.json fragment from the configuration and the declared jobs,
tasks and event handlers, and `--check` against an existing manifest (issue 16)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from conftest import ROOT
from test_e2e import cli

from jobs.registry import Registry, job, on_event
from service.config import Config
from service.manifest import (
    LIFECYCLE_EVENTS,
    SANDBOX_KEY,
    event_permission,
    manifest_fragment,
    missing_from,
    webhook_event_types,
)


@job(every=3600, permissions=["invoice_read", "customer_read"])
async def sync_invoices(ctx):
    """Copy the latest invoices."""


@on_event("customer.subscription.updated", "invoice.paid")
async def on_billing(ctx):
    pass


@dataclass(frozen=True)
class FakeTaskSpec:  # the shape a @task declaration will have once the tasks branch lands
    description: str
    permissions: tuple[str, ...]


def _registry() -> Registry:
    registry = Registry()
    registry.add_module(__import__(__name__))
    return registry


def test_fragment_collects_jobs_tasks_and_events():
    registry = _registry()
    registry.tasks = {"export": FakeTaskSpec("Export everything", ("file_write",))}  # type: ignore[attr-defined]
    config = Config.from_env({"PUBLIC_URL": "https://app.example.com/"})
    fragment = manifest_fragment(config, registry)
    assert fragment["ui_extension"]["content_security_policy"]["connect-src"] == [
        "https://app.example.com/api/"]
    assert fragment["allowed_redirect_uris"] == ["https://app.example.com/callback/stripe"]
    purposes = {p["permission"]: p["purpose"] for p in fragment["permissions"]}
    assert list(purposes) == sorted(purposes) == [
        "customer_read", "event_read", "file_write", "invoice_read", "subscription_read"]
    assert purposes["invoice_read"] == (
        "Used by the job sync_invoices (Copy the latest invoices) and invoice.paid events.")
    assert "the task export" in purposes["file_write"]
    assert "customer.subscription.updated events" in purposes["subscription_read"]
    assert all(p["purpose"] for p in fragment["permissions"])
    # the webhook endpoint's subscription: the install lifecycle plus every handled type
    assert webhook_event_types(registry) == [
        *LIFECYCLE_EVENTS, "customer.subscription.updated", "invoice.paid"]


def test_event_permissions():
    assert event_permission("customer.created") == ("customer_read", False)
    assert event_permission("charge.dispute.created") == ("dispute_read", False)
    assert event_permission("checkout.session.completed") == ("checkout_session_read", False)
    assert event_permission("widget.frobbed") == ("widget_read", True)  # a guess, said so


def test_check_lists_what_is_missing():
    config = Config.from_env({"PUBLIC_URL": "https://app.example.com"})
    fragment = manifest_fragment(config, _registry())
    assert missing_from(fragment, fragment) == []
    assert len(missing_from({}, fragment)) == len(fragment["permissions"]) + 2
    existing = {
        "permissions": [{"permission": p["permission"], "purpose": "x"}
                        for p in fragment["permissions"] if p["permission"] != "event_read"],
        # a broader connect-src prefix covers /api/
        "ui_extension": {"content_security_policy": {"connect-src": ["https://app.example.com/"]}},
        "allowed_redirect_uris": ["https://elsewhere.example.com/callback/stripe"],
    }
    assert missing_from(existing, fragment) == [
        "permissions: event_read (purpose: Used by receiving webhook events from the accounts "
        "that install the app.)",
        "allowed_redirect_uris: https://app.example.com/callback/stripe",
    ]
    # malformed shapes are missing entries, not crashes
    assert len(missing_from({"permissions": ["x"], "ui_extension": []}, fragment)) == len(
        missing_from({}, fragment))


def test_manifest_command_prints_and_checks(tmp_path):
    env = {"PUBLIC_URL": "https://app.example.com", "PORT": "8123"}
    out = cli(ROOT, "manifest", **env)
    assert out.returncode == 0, out.stderr
    fragment = json.loads(out.stdout)  # stdout is the JSON alone, ready to paste
    assert fragment["permissions"] == [{
        "permission": "balance_read",
        "purpose": "Used by the job balance_snapshot (Store the account's Stripe balance once a "
                   "day (and right after it installs)).",
    }, {
        "permission": "customer_read",
        "purpose": "Used by the task sync_customers (Count the account's customers and find the "
                   "most recent one (resumes after a restart)).",
    }]
    assert fragment["allowed_redirect_uris"] == ["https://app.example.com/callback/stripe"]
    assert "https://app.example.com/webhooks" in out.stderr
    assert "account.application.authorized" in out.stderr and "PUBLIC_URL is" not in out.stderr
    # apps.install.* come from the developer's own account: a second endpoint, not the first's
    connected, own = (next(line for line in out.stderr.splitlines()
                           if line.startswith(f"Webhook endpoint {n}:")) for n in (1, 2))
    assert "connected accounts" in connected and "apps.install" not in connected
    assert "own account" in own and own.endswith(
        "apps.install.created, apps.install.updated, apps.install.deleted")
    # the default PUBLIC_URL follows HOST and PORT, and the command says it is not https
    out = cli(ROOT, "manifest", PORT="8123")
    assert json.loads(out.stdout)["ui_extension"]["content_security_policy"]["connect-src"] == [
        "http://127.0.0.1:8123/api/"]
    assert "PUBLIC_URL is http://127.0.0.1:8123" in out.stderr

    manifest = tmp_path / "stripe-app.json"
    manifest.write_text(json.dumps({"id": "com.example.app", "permissions": []}))
    out = cli(ROOT, "manifest", "--check", str(manifest), **env)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "missing permissions: balance_read (purpose: Used by the job balance_snapshot (Store "
        "the account's Stripe balance once a day (and right after it installs)).)",
        "missing permissions: customer_read (purpose: Used by the task sync_customers (Count the "
        "account's customers and find the most recent one (resumes after a restart)).)",
        "missing ui_extension.content_security_policy.connect-src: https://app.example.com/api/",
        "missing allowed_redirect_uris: https://app.example.com/callback/stripe",
    ]
    manifest.write_text(json.dumps({"id": "com.example.app", **fragment}))
    out = cli(ROOT, "manifest", "--check", str(manifest), **env)
    assert out.returncode == 0 and "has everything" in out.stdout
    manifest.write_text("{not json")
    out = cli(ROOT, "manifest", "--check", str(manifest), **env)
    assert out.returncode == 2 and "is not JSON" in out.stderr and "Traceback" not in out.stderr
    out = cli(ROOT, "manifest", "--check", str(tmp_path / "none.json"), **env)
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_sandbox_install_compatible_follows_the_sandbox_configuration():
    """Issue 26: the manifest lets users install in their sandboxes only when this backend can
    serve them (the managed sandbox's key or webhook secrets are set)."""
    registry = _registry()
    plain = manifest_fragment(Config.from_env({"PUBLIC_URL": "https://app.example.com"}),
                              registry)
    assert SANDBOX_KEY not in plain
    assert missing_from({}, plain) == missing_from({SANDBOX_KEY: False}, plain)
    for env in ({"STRIPE_SECRET_KEY_SANDBOX": "sk_test_sandbox"},
                {"STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_sandbox"}):
        config = Config.from_env({"PUBLIC_URL": "https://app.example.com", **env})
        assert config.sandbox_configured
        fragment = manifest_fragment(config, registry)
        assert fragment[SANDBOX_KEY] is True
        # a manifest without it (or with it false) lacks it; one with it is complete
        assert f"{SANDBOX_KEY}: true" in missing_from({}, fragment)
        assert missing_from({**fragment, SANDBOX_KEY: False}, fragment) == [
            f"{SANDBOX_KEY}: true"]
        assert missing_from(fragment, fragment) == []


def test_manifest_command_says_sandbox(tmp_path):
    env = {"PUBLIC_URL": "https://app.example.com", "PORT": "8123",
           "STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_sandbox_manifest"}
    out = cli(ROOT, "manifest", **env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[SANDBOX_KEY] is True
    assert "managed sandbox" in out.stderr and "STRIPE_WEBHOOK_SECRETS_SANDBOX" in out.stderr
    out = cli(ROOT, "manifest", PUBLIC_URL="https://app.example.com", PORT="8123")
    assert SANDBOX_KEY not in json.loads(out.stdout) and "sandbox" not in out.stderr
