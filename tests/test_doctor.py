"""`run.py doctor` and `service/doctor.py` (issue 16): each bad configuration gives its ✗, a
check the API cannot answer says "skipped", against localstripe, a small loopback Stripe
(tests/fake_stripe.py) for what localstripe lacks, and the real backend for `PUBLIC_URL`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import peewee as pw
import pytest
from conftest import ROOT, SAMPLE_APP, base_env, free_port, running
from fake_stripe import FakeStripe
from test_e2e import clean_env, cli, wait_until

from jobs.registry import Registry, on_event
from models.db import Storage, open_database
from models.migrate import migrate
from service.config import Config, ConfigError
from service.doctor import (
    LIFECYCLE_EVENTS,
    Finding,
    Status,
    check_app,
    check_env,
    check_urls,
    format_finding,
    run_checks,
)

LIVE_KEY, TEST_KEY = "sk_live_doctor", "sk_test_doctor"


@on_event("customer.created")
async def _welcome(ctx):  # an app's handler: its type must be subscribed
    pass


class _Module:
    welcome = staticmethod(_welcome)


def registry_with_handler() -> Registry:
    registry = Registry()
    registry.add_module(_Module)
    return registry


def find(findings: list[Finding], variable: str, status: Status | None = None) -> list[Finding]:
    return [f for f in findings if f.variable == variable
            and (status is None or f.status is status)]


@pytest.fixture
def storage(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/doctor.db")
    migrate(db, apps=[SAMPLE_APP])  # up to date: the project's migrations and the app's
    st = Storage(db, workers=1)
    yield st
    st.close()


def config(fake_url: str, **env: str) -> Config:
    values = {"STRIPE_API_BASE": fake_url, "STRIPE_SECRET_KEY_TEST": TEST_KEY,
              "PUBLIC_URL": "https://app.example.com", "APP_PACKAGES": SAMPLE_APP, **env}
    return Config.from_env({k: v for k, v in values.items() if v})


def good_fake(**kw) -> FakeStripe:
    fake = FakeStripe(keys={LIVE_KEY: True, TEST_KEY: False}, **kw)
    fake.start()
    return fake


@pytest.mark.gen_test(timeout=30)
async def test_good_configuration_passes(storage):
    fake = good_fake()
    fake.endpoint("https://app.example.com/webhooks", livemode=False,
                  events=[*LIFECYCLE_EVENTS, "customer.created"])
    fake.endpoint("https://app.example.com/webhooks", livemode=True)  # "*" covers all
    try:
        cfg = config(fake.url, STRIPE_SECRET_KEY_LIVE=LIVE_KEY)
        findings = await run_checks(cfg, storage, registry_with_handler(),
                                    probe_public_url=False)
    finally:
        fake.stop()
    assert not [f for f in findings if f.status is not Status.OK], findings
    assert {f.variable for f in findings} >= {
        "STRIPE_SECRET_KEY_LIVE", "STRIPE_SECRET_KEY_TEST", "STRIPE_WEBHOOK_SECRETS_LIVE",
        "STRIPE_WEBHOOK_SECRETS_TEST", "PUBLIC_URL", "DATABASE_URL", "clock"}
    (key,) = find(findings, "STRIPE_SECRET_KEY_LIVE")
    assert key.message == "accepted by Stripe (live mode)"
    assert format_finding(key).startswith("✓ STRIPE_SECRET_KEY_LIVE: ")


@pytest.mark.gen_test(timeout=30)
async def test_each_bad_stripe_configuration_fails(storage):
    fake = good_fake()
    try:
        # a key Stripe refuses
        cfg = config(fake.url, STRIPE_SECRET_KEY_TEST="sk_test_rolled")
        (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False),
                      "STRIPE_SECRET_KEY_TEST", Status.FAILED)
        assert "refused" in bad.message and "API keys" in bad.fix
        # a key whose mode is not its variable's (Stripe says livemode=false)
        fake.keys["sk_live_butreallytest"] = False
        cfg = config(fake.url, STRIPE_SECRET_KEY_LIVE="sk_live_butreallytest")
        (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False),
                      "STRIPE_SECRET_KEY_LIVE", Status.FAILED)
        assert "not a live-mode key" in bad.message
        # no endpoint at PUBLIC_URL/webhooks
        fake.endpoint("https://old.example.com/webhooks", livemode=False)
        findings = await run_checks(config(fake.url), None, None, probe_public_url=False)
        (bad,) = find(findings, "STRIPE_WEBHOOK_SECRETS_TEST", Status.FAILED)
        assert "no test-mode webhook endpoint points at https://app.example.com/webhooks" \
            in bad.message and "old.example.com" in bad.message
        assert "account.application.authorized" in bad.fix
        # an endpoint there, but platform-only, disabled, and missing the handler's type
        fake.endpoint("https://app.example.com/webhooks", livemode=False, connect=False,
                      status="disabled", events=list(LIFECYCLE_EVENTS))
        findings = await run_checks(config(fake.url), None, registry_with_handler(),
                                    probe_public_url=False)
        (bad,) = find(findings, "STRIPE_WEBHOOK_SECRETS_TEST", Status.FAILED)
        assert "connect: false" in bad.message and "is disabled" in bad.message
        assert "misses customer.created" in bad.message
        # the clock two minutes off Stripe's Date header
        fake.clock_offset = -120
        (bad,) = find(await run_checks(config(fake.url), None, None, probe_public_url=False),
                      "clock", Status.FAILED)
        # (Date has one-second resolution: the skew is known to within a second)
        skew = re.search(r"clock is \+(\d+) s off Stripe's Date header", bad.message)
        assert skew and 118 <= int(skew.group(1)) <= 121 and "NTP" in bad.fix
    finally:
        fake.stop()


@pytest.mark.gen_test(timeout=30)
async def test_an_emulator_is_skipped_not_passed(localstripe, storage):
    cfg = Config.from_env({"STRIPE_API_BASE": localstripe, "STRIPE_SECRET_KEY_TEST": TEST_KEY})
    findings = await run_checks(cfg, storage, None, probe_public_url=False)
    (key,) = find(findings, "STRIPE_SECRET_KEY_TEST")
    assert key.status is Status.SKIPPED and "not Stripe" in key.message
    (hooks,) = find(findings, "STRIPE_WEBHOOK_SECRETS_TEST")
    assert hooks.status is Status.SKIPPED and "/v1/webhook_endpoints" in hooks.message
    assert find(findings, "clock", Status.OK)  # its Date header still tells the clock
    # an unreachable API is a failure, not a skip
    cfg = Config.from_env({"STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
                           "STRIPE_SECRET_KEY_TEST": TEST_KEY})
    (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False), "STRIPE_API_BASE")
    assert bad.status is Status.FAILED and "cannot reach" in bad.message
    assert "(checking STRIPE_SECRET_KEY_TEST)" in bad.message and "\n" not in bad.message
    # no key at all: nothing to check, skipped
    findings = await run_checks(Config.from_env({}), None, None, probe_public_url=False)
    assert find(findings, "STRIPE_SECRET_KEY_LIVE, _TEST", Status.SKIPPED)


def test_variables_and_urls():
    findings = check_env({"STRIPE_SECRET_KEY_LIVE": "sk_test_x", "STRIPE_SECRET_KEY_TEST":
                          "pk_test_x", "STRIPE_APP_SECRETS": "absec_a,whsec_b",
                          "STRIPE_WEBHOOK_SECRETS_LIVE": "absec_c",
                          "STRIPE_WEBHOOK_SECRETS_TEST": "whsec_ok"})
    assert find(findings, "STRIPE_SECRET_KEY_LIVE", Status.FAILED)[0].message == \
        "holds a test-mode key"
    assert "publishable" in find(findings, "STRIPE_SECRET_KEY_TEST", Status.FAILED)[0].message
    assert "1 of 2 values do not start with absec_" in \
        find(findings, "STRIPE_APP_SECRETS", Status.FAILED)[0].message
    assert find(findings, "STRIPE_WEBHOOK_SECRETS_LIVE", Status.FAILED)
    assert find(findings, "STRIPE_WEBHOOK_SECRETS_TEST", Status.OK)
    # live key set: http PUBLIC_URL and redirect fail
    cfg = Config.from_env({"STRIPE_SECRET_KEY_LIVE": LIVE_KEY})
    findings = check_urls(cfg)
    assert find(findings, "PUBLIC_URL", Status.FAILED)
    assert find(findings, "STRIPE_INSTALL_REDIRECT_URI", Status.FAILED)
    # ... unless the live key is for an emulator (`run.py dev`): skipped, with what to do later
    for base, status in (("http://127.0.0.1:8420", Status.SKIPPED),
                         ("https://api.stripe.com", Status.FAILED)):
        cfg = Config.from_env({"STRIPE_SECRET_KEY_LIVE": LIVE_KEY, "STRIPE_API_BASE": base})
        assert find(check_urls(cfg), "PUBLIC_URL", status)
    # test keys only: http is fine; PUBLIC_URL sets the redirect's default
    cfg = Config.from_env({"PUBLIC_URL": "https://app.example.com/"})
    assert cfg.install_redirect_uri == "https://app.example.com/callback/stripe"
    assert not [f for f in check_urls(cfg) if f.status is not Status.OK]
    # a redirect on another host than PUBLIC_URL does not reach this backend
    cfg = Config.from_env({"PUBLIC_URL": "https://app.example.com",
                           "STRIPE_INSTALL_REDIRECT_URI": "https://other.example.com/cb"})
    (bad,) = [f for f in check_urls(cfg) if f.status is Status.FAILED]
    assert bad.variable == "STRIPE_INSTALL_REDIRECT_URI" and "not on PUBLIC_URL" in bad.message


@pytest.mark.gen_test(timeout=30)
async def test_database_checks(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/fresh.db")
    st = Storage(db, workers=1)
    try:
        findings = await run_checks(Config.from_env({}), st, None, probe_public_url=False)
        (bad,) = find(findings, "DATABASE_URL", Status.FAILED)
        assert "not applied: 001_initial" in bad.message and "run.py migrate" in bad.fix
    finally:
        st.close()
    # a database this process cannot write (SQLite's query_only: root ignores file modes)
    ro = pw.SqliteDatabase(str(tmp_path / "fresh.db"), pragmas={"query_only": 1},
                           check_same_thread=False)
    st = Storage(ro, workers=1)
    try:
        findings = await run_checks(Config.from_env({}), st, None, probe_public_url=False)
        (bad,) = find(findings, "DATABASE_URL", Status.FAILED)
        assert bad.message.startswith("cannot write:") and "write access" in bad.fix
    finally:
        st.close()


@pytest.mark.gen_test(timeout=30)
async def test_public_url_probe(tmp_path):
    async with running(base_env(tmp_path)) as app:
        cfg = Config.from_env({"PUBLIC_URL": app.url})
        findings = await run_checks(cfg, None, None)
        assert find(findings, "PUBLIC_URL", Status.OK)[-1].message == \
            f"{app.url} reaches this backend"
        assert find(findings, "STRIPE_INSTALL_REDIRECT_URI", Status.OK)[-1].message.endswith(
            "is served")
    fake = good_fake()  # something else answers there
    try:
        findings = await run_checks(Config.from_env({"PUBLIC_URL": fake.url}), None, None)
        assert "not as this backend" in find(findings, "PUBLIC_URL", Status.FAILED)[0].message
    finally:
        fake.stop()
    nobody = f"http://127.0.0.1:{free_port()}"
    findings = await run_checks(Config.from_env({"PUBLIC_URL": nobody}), None, None)
    assert "nothing answers" in find(findings, "PUBLIC_URL", Status.SKIPPED)[0].message


def test_doctor_command(tmp_path, localstripe):
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {"DATABASE_URL": url, "STRIPE_API_BASE": localstripe,
           "STRIPE_SECRET_KEY_TEST": TEST_KEY, "STRIPE_APP_SECRETS": "absec_" + "a" * 20}
    out = cli(ROOT, "doctor", "--no-probe", **env)
    assert out.returncode == 1, out.stdout + out.stderr  # not migrated yet
    assert re.search(r"^✗ DATABASE_URL: \d+ migration\(s\) not applied: 001_initial.* -> fix: "
                     r"run python run.py migrate", out.stdout, re.M), out.stdout
    assert cli(ROOT, "migrate", **env).returncode == 0
    out = cli(ROOT, "doctor", "--no-probe", **env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "✓ STRIPE_APP_SECRETS: 1 secret(s), all absec_..." in lines
    assert "✓ DATABASE_URL: migrations are current" in lines
    assert any(line.startswith("- skipped: STRIPE_SECRET_KEY_TEST: ") for line in lines)
    # a configuration that does not even load is explained, exit 1
    out = cli(ROOT, "doctor", **{**env, "STRIPE_SECRET_KEY_LIVE": "sk_test_swapped"})
    assert out.returncode == 1
    assert "✗ STRIPE_SECRET_KEY_LIVE: holds a test-mode key -> fix: move it to " \
        "STRIPE_SECRET_KEY_TEST" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_serve_logs_the_doctor_after_readiness(tmp_path, localstripe):
    port = free_port()
    env = clean_env(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path}/serve.db",
                    STRIPE_API_BASE=localstripe, STRIPE_SECRET_KEY_TEST=TEST_KEY)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "serve"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.time() + 40

        def read_until(text: str) -> None:
            while time.time() < deadline:
                line = proc.stdout.readline()
                lines.append(line)
                if text in line:
                    return
            raise AssertionError("".join(lines))

        read_until("listening on")
        read_until("doctor - skipped: STRIPE_WEBHOOK_SECRETS_TEST")
        assert any("doctor ✓ DATABASE_URL: migrations are current" in line for line in lines)
        import httpx

        assert wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code
                          == 200)
    finally:
        proc.terminate()
        proc.wait(15)


def test_doctor_warns_when_the_example_app_runs_with_a_live_key():
    live = config("", STRIPE_SECRET_KEY_LIVE=LIVE_KEY, APP_PACKAGES="")  # Stripe itself
    [finding] = check_app(live)
    assert finding.status is Status.FAILED and finding.variable == "APP_PACKAGES"
    assert "example app is running with a live key" in finding.message
    assert check_app(config("", APP_PACKAGES=""))[0].status is Status.OK
    # an emulator's live mode (run.py dev) is no live mode
    emulated = config("http://127.0.0.1:9", STRIPE_SECRET_KEY_LIVE=LIVE_KEY, APP_PACKAGES="")
    assert check_app(emulated)[0].status is Status.OK
    [own] = check_app(config("http://127.0.0.1:9", STRIPE_SECRET_KEY_LIVE=LIVE_KEY))
    assert own.status is Status.OK and own.message == f"your app: {SAMPLE_APP}"


# ---- the managed sandbox (issue 26) ------------------------------------------------------------

SANDBOX_KEY = "sk_test_sandboxdoctor"


def sandbox_fake() -> FakeStripe:
    """The developer's account (live and test keys, one id) and a sandbox of its own."""
    fake = good_fake()
    fake.keys[SANDBOX_KEY] = False
    fake.accounts.update({LIVE_KEY: "acct_developer", TEST_KEY: "acct_developer",
                          SANDBOX_KEY: "acct_sandbox"})
    for livemode in (True, False):
        fake.endpoint("https://app.example.com/webhooks", livemode=livemode)
    return fake


def sandbox_config(fake_url: str, **env: str) -> Config:
    values = {"STRIPE_SECRET_KEY_LIVE": LIVE_KEY, "STRIPE_SECRET_KEY_SANDBOX": SANDBOX_KEY,
              "STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_sandboxdoctor", **env}
    return config(fake_url, **values)


@pytest.mark.gen_test(timeout=30)
async def test_a_sandbox_key_of_a_sandbox_passes(storage):
    fake = sandbox_fake()
    # the sandbox's own endpoint, listed with its key only (test mode's is another list)
    fake.endpoint("https://app.example.com/webhooks", key=SANDBOX_KEY)
    try:
        findings = await run_checks(sandbox_config(fake.url), storage, None,
                                    probe_public_url=False)
    finally:
        fake.stop()
    assert not [f for f in findings if f.status is not Status.OK], findings
    keys = [f.message for f in find(findings, "STRIPE_SECRET_KEY_SANDBOX")]
    assert "accepted by Stripe (test mode, as a sandbox's keys are)" in keys
    assert any("belongs to acct_sandbox, an account of its own" in m for m in keys)
    assert any("sandbox installs are served" in m for m in keys)
    (hooks,) = find(findings, "STRIPE_WEBHOOK_SECRETS_SANDBOX", Status.OK)
    assert "listens to connected accounts" in hooks.message
    # each key's account was read, with that key (the Authorization header on the wire)
    accounts = {r.headers.get("Authorization") for r in fake.requests if r.path == "/v1/account"}
    assert accounts == {f"Bearer {k}" for k in (SANDBOX_KEY, TEST_KEY, LIVE_KEY)}


@pytest.mark.gen_test(timeout=30)
async def test_a_sandbox_key_that_is_not_a_sandbox_fails(storage):
    fake = sandbox_fake()
    try:
        # the test key of the developer's account, under another name: the same account
        fake.keys["sk_test_othertestkey"] = False
        fake.accounts["sk_test_othertestkey"] = "acct_developer"
        cfg = sandbox_config(fake.url, STRIPE_SECRET_KEY_SANDBOX="sk_test_othertestkey")
        findings = await run_checks(cfg, None, None, probe_public_url=False)
        (bad,) = find(findings, "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
        assert bad.message == (
            "belongs to acct_developer, the same account as STRIPE_SECRET_KEY_TEST: it is that "
            "account's test-mode key, not a sandbox's")
        assert "sandbox > Developers > API keys" in bad.fix
        # with no test key, the live key's account tells the same
        cfg = config(fake.url, STRIPE_SECRET_KEY_TEST="", STRIPE_SECRET_KEY_LIVE=LIVE_KEY,
                     STRIPE_SECRET_KEY_SANDBOX="sk_test_othertestkey",
                     STRIPE_WEBHOOK_SECRETS_SANDBOX="whsec_sandboxdoctor")
        (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False),
                      "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
        assert "the same account as STRIPE_SECRET_KEY_LIVE" in bad.message
        # the sandbox's endpoints are listed with its key: test mode's do not count for it
        fake.endpoint("https://old.example.com/webhooks", key=SANDBOX_KEY)
        findings = await run_checks(sandbox_config(fake.url), None, None, probe_public_url=False)
        (bad,) = find(findings, "STRIPE_WEBHOOK_SECRETS_SANDBOX", Status.FAILED)
        assert bad.message == ("no managed sandbox's webhook endpoint points at "
                               "https://app.example.com/webhooks (registered: "
                               "https://old.example.com/webhooks)")
        assert "in the managed sandbox's Dashboard" in bad.fix
        assert find(findings, "STRIPE_WEBHOOK_SECRETS_TEST", Status.OK)
        # a key Stripe refuses
        cfg = sandbox_config(fake.url, STRIPE_SECRET_KEY_SANDBOX="sk_test_rolledsandbox")
        (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False),
                      "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
        assert "refused" in bad.message
        # the key without the sandbox's webhook secrets, and the reverse
        cfg = config(fake.url, STRIPE_SECRET_KEY_SANDBOX=SANDBOX_KEY)
        bad = find(await run_checks(cfg, None, None, probe_public_url=False),
                   "STRIPE_WEBHOOK_SECRETS_SANDBOX", Status.FAILED)
        assert [f for f in bad if "unset while STRIPE_SECRET_KEY_SANDBOX is set" in f.message]
        cfg = config(fake.url, STRIPE_WEBHOOK_SECRETS_SANDBOX="whsec_sandboxdoctor")
        (bad,) = find(await run_checks(cfg, None, None, probe_public_url=False),
                      "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
        assert "unset while STRIPE_WEBHOOK_SECRETS_SANDBOX is set" in bad.message
        # nothing of the sandbox set: nothing said about it
        findings = await run_checks(config(fake.url), None, None, probe_public_url=False)
        assert not [f for f in findings if "SANDBOX" in f.variable]
    finally:
        fake.stop()


def test_a_live_key_for_the_sandbox_is_refused():
    with pytest.raises(ConfigError, match="STRIPE_SECRET_KEY_SANDBOX"):
        Config.from_env({"STRIPE_SECRET_KEY_SANDBOX": "sk_live_notasandbox"})
    with pytest.raises(ConfigError, match="the managed sandbox has its own key"):
        Config.from_env({"STRIPE_SECRET_KEY_TEST": TEST_KEY, "STRIPE_SECRET_KEY_SANDBOX": TEST_KEY})
    # the raw-variable check explains both, as it does for the other modes
    findings = check_env({"STRIPE_SECRET_KEY_SANDBOX": "sk_live_notasandbox"})
    (bad,) = find(findings, "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
    assert bad.message == "holds a live-mode key; a sandbox's keys are test-mode keys"
    (bad,) = find(check_env({"STRIPE_SECRET_KEY_SANDBOX": TEST_KEY,
                             "STRIPE_SECRET_KEY_TEST": TEST_KEY}),
                  "STRIPE_SECRET_KEY_SANDBOX", Status.FAILED)
    assert bad.message == "is the same key as STRIPE_SECRET_KEY_TEST"
    (ok,) = find(check_env({"STRIPE_SECRET_KEY_SANDBOX": "rk_test_sandbox"}),
                 "STRIPE_SECRET_KEY_SANDBOX", Status.OK)
    assert ok.message == "a test-mode restricted key of the managed sandbox"
