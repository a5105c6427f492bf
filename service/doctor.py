"""The configuration doctor: checks the configuration against itself, this machine and the
Stripe API (`STRIPE_API_BASE`), and says for each check what to fix.

    findings = await run_checks(config, storage, registry, env=os.environ)
    for line in format_findings(findings): print(line)

Each `Finding` is `(status, variable, message, fix)`; `status` is `ok`, `failed` or `skipped`.
A check that cannot be answered (no key set, an emulator that lacks the endpoint, nothing
listening at `PUBLIC_URL`) is `skipped`, never `ok`. The checks:

- keys in their right variables (`sk_live_`/`rk_live_` in `_LIVE`, `sk_test_`/`rk_test_` in
  `_TEST` and `_SANDBOX`, the sandbox's not the test key), secrets with their right prefixes
  (`absec_`, `whsec_`), read from the raw environment so that a value `Config` refuses is still
  explained;
- the managed sandbox configured whole: its key and its webhook secrets set together (one
  without the other serves sandbox installs half);
- each key accepted by the API, and its `livemode` that of its variable (false for the
  sandbox's);
- the sandbox's key belongs to a sandbox: `GET /v1/account` names an account other than the
  test key's and the live key's (a sandbox is an account of its own; an account's test mode
  shares its live account's id), so it is not the test key of the developer's account;
- `PUBLIC_URL` and `STRIPE_INSTALL_REDIRECT_URI` https when a live key is set; the redirect on
  `PUBLIC_URL`'s origin, and (when probing) its path served there;
- the clock against the API's `Date` header (signatures have a tolerance of a few minutes);
- the database writable, its migrations current;
- the webhook endpoints registered at Stripe, listed with each mode's key (the sandbox's own
  with the sandbox's key): one points at `PUBLIC_URL/webhooks`, is enabled, listens to connected
  accounts (`connect: true`), and subscribes to `account.application.authorized`/`deauthorized`
  and every type an `@on_event` handler needs.

`serve` runs the same checks in the background after start-up and logs one line per finding
(`log_findings`); the status page shows the latest ones (`DoctorReport`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import stripe

from models.enums import MODES, Mode
from models.migrate import pending
from service.config import EXAMPLE_APP, app_packages

if TYPE_CHECKING:
    from jobs.registry import Registry
    from models.db import Storage
    from service.config import Config

log = logging.getLogger("app.doctor")

STRIPE_API = "https://api.stripe.com"
LIFECYCLE_EVENTS = ("account.application.authorized", "account.application.deauthorized")
#: Stripe's `Date` header has one-second resolution; more than this is a clock to fix.
MAX_CLOCK_SKEW = 5.0
TIMEOUT = 10.0


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    status: Status
    variable: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


MARKS = {Status.OK: "✓", Status.FAILED: "✗", Status.SKIPPED: "-"}


def format_finding(f: Finding) -> str:
    """One line: mark, variable, message, and the fix for a failure."""
    mark = MARKS[f.status] + (" skipped:" if f.status is Status.SKIPPED else "")
    line = f"{mark} {f.variable}: {f.message}"
    if f.fix and f.status is not Status.OK:
        line += f" -> fix: {f.fix}"
    return line


def format_findings(findings: list[Finding]) -> list[str]:
    return [format_finding(f) for f in findings]


def failed(findings: list[Finding]) -> bool:
    return any(f.status is Status.FAILED for f in findings)


# ---- the raw environment ---------------------------------------------------------------------

def _values(env: Mapping[str, str], name: str) -> list[str]:
    return [v.strip() for v in env.get(name, "").split(",") if v.strip()]


def check_env(env: Mapping[str, str]) -> list[Finding]:
    """Keys and secrets in their right variables, with their right prefixes."""
    out: list[Finding] = []
    for mode in MODES:
        # a sandbox's keys are test-mode keys; a live key is never a sandbox's
        kind = mode.key_mode
        other = "test" if mode == Mode.LIVE else "live"
        name = f"STRIPE_SECRET_KEY_{mode.upper()}"
        sandbox = " of the managed sandbox" if mode == Mode.SANDBOX else ""
        for value in _values(env, name):
            if mode == Mode.SANDBOX and value in _values(env, "STRIPE_SECRET_KEY_TEST"):
                out.append(Finding(Status.FAILED, name, "is the same key as "
                                   "STRIPE_SECRET_KEY_TEST", "put the managed sandbox's own key "
                                   "here (Dashboard: switch to the sandbox > Developers > API "
                                   "keys)"))
            elif value.startswith((f"sk_{kind}_", f"rk_{kind}_")):
                what = "restricted" if value.startswith("rk_") else "secret"
                out.append(Finding(Status.OK, name, f"a {kind}-mode {what} key{sandbox}"))
            elif mode == Mode.SANDBOX and value.startswith(("sk_live_", "rk_live_")):
                out.append(Finding(Status.FAILED, name, "holds a live-mode key; a sandbox's "
                                   "keys are test-mode keys", "put the managed sandbox's key "
                                   "(sk_test_... or rk_test_...) here"))
            elif value.startswith((f"sk_{other}_", f"rk_{other}_")):
                out.append(Finding(Status.FAILED, name, f"holds a {other}-mode key",
                                   f"move it to STRIPE_SECRET_KEY_{other.upper()} and put the "
                                   f"{mode}-mode key (sk_{mode}_... or rk_{mode}_...) here"))
            elif value.startswith("pk_"):
                out.append(Finding(Status.FAILED, name, "holds a publishable key (pk_...)",
                                   f"use the secret key sk_{kind}_... or a restricted key "
                                   f"rk_{kind}_... (Dashboard > Developers > API keys)"))
            else:
                out.append(Finding(Status.FAILED, name, "is not a Stripe secret key",
                                   f"set it to sk_{kind}_... or rk_{kind}_..."))
    prefixed = [("STRIPE_APP_SECRETS", "absec_", "the app's signing secret (Dashboard > Apps > "
                 "your app > Signing secret)"),
                *((f"STRIPE_WEBHOOK_SECRETS_{m.upper()}", "whsec_",
                   f"the {_where(m)} webhook endpoint's signing secret") for m in MODES)]
    for name, prefix, what in prefixed:
        values = _values(env, name)
        bad = [v for v in values if not v.startswith(prefix)]
        if bad:
            out.append(Finding(Status.FAILED, name,
                               f"{len(bad)} of {len(values)} values do not start with {prefix}",
                               f"use {what}, which starts with {prefix}"))
        elif values:
            out.append(Finding(Status.OK, name, f"{len(values)} secret(s), all {prefix}..."))
    return out


def _where(mode: str) -> str:
    """How a finding names a mode's side of Stripe."""
    return "managed sandbox's" if mode == Mode.SANDBOX else f"{mode}-mode"


# ---- the configuration against itself ----------------------------------------------------------

def check_sandbox(config: Config) -> list[Finding]:
    """The managed sandbox configured whole, or not at all: its key without webhook secrets
    misses every sandbox event (installs, uninstalls), and secrets without the key leave sandbox
    installs' jobs without a key and their installs unconfirmed by the Install API. Neither
    set: nothing to say (sandbox installs are not served; `manifest` does not offer them)."""
    key = bool(config.secret_keys.get(Mode.SANDBOX))
    secrets = bool(config.webhook_secrets.get(Mode.SANDBOX))
    if key and not secrets:
        return [Finding(Status.FAILED, "STRIPE_WEBHOOK_SECRETS_SANDBOX",
                        "unset while STRIPE_SECRET_KEY_SANDBOX is set: sandbox events (installs, "
                        "uninstalls, @on_event types) are refused",
                        "in the managed sandbox, add the webhook endpoints at "
                        f"{config.public_url}/webhooks and put their signing secrets here")]
    if secrets and not key:
        return [Finding(Status.FAILED, "STRIPE_SECRET_KEY_SANDBOX",
                        "unset while STRIPE_WEBHOOK_SECRETS_SANDBOX is set: sandbox installs' "
                        "jobs cannot call Stripe, and the Install API is not read for them",
                        "put the managed sandbox's secret key (sk_test_...) here")]
    if key:
        return [Finding(Status.OK, "STRIPE_SECRET_KEY_SANDBOX",
                        "the managed sandbox's key and webhook secrets are set: sandbox installs "
                        "are served")]
    return []


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_app(config: Config) -> list[Finding]:
    """Which app runs; a warning (failed) when it is the shipped example app with a live key
    set for Stripe itself (no `STRIPE_API_BASE`: `run.py dev`'s emulator is no live mode): the
    examples' job and task would run on every live account that installs."""
    apps = app_packages(config)
    if apps != (EXAMPLE_APP,):
        return [Finding(Status.OK, "APP_PACKAGES", f"your app: {', '.join(apps)}")]
    if config.secret_keys.get(Mode.LIVE) and not config.api_base:
        return [Finding(Status.FAILED, "APP_PACKAGES",
                        "the shipped example app is running with a live key "
                        "(STRIPE_SECRET_KEY_LIVE): its job and task run on live accounts",
                        "set APP_PACKAGES (or --app) to your own app; see docs/apps.md")]
    return [Finding(Status.OK, "APP_PACKAGES", "unset: the shipped example app runs "
                    "(test keys only)")]


def check_urls(config: Config) -> list[Finding]:
    out: list[Finding] = []
    live = bool(config.secret_keys.get("live"))
    for name, url in (("PUBLIC_URL", config.public_url),
                      ("STRIPE_INSTALL_REDIRECT_URI", config.install_redirect_uri)):
        if url.startswith("https://"):
            out.append(Finding(Status.OK, name, f"{url} is https"))
        elif live and config.api_base and _origin(config.api_base) != "https://api.stripe.com":
            # `run.py dev`: a live key for an emulator; no live install reaches this URL yet
            out.append(Finding(Status.SKIPPED, name,
                               f"{url} is not https; the live key is for {config.api_base}, not "
                               "Stripe", "serve the backend over https before going live"))
        elif live:
            out.append(Finding(Status.FAILED, name, f"{url} is not https but a live key is set",
                               "serve the backend over https (a TLS proxy in front of it) and "
                               f"set {name} to its https address"))
        else:
            out.append(Finding(Status.OK, name, f"{url} (http is accepted for test mode only)"))
    if _origin(config.install_redirect_uri) != _origin(config.public_url):
        out.append(Finding(Status.FAILED, "STRIPE_INSTALL_REDIRECT_URI",
                           f"{config.install_redirect_uri} is not on PUBLIC_URL "
                           f"({config.public_url}), so this backend does not receive it",
                           "unset it (it defaults to PUBLIC_URL/callback/stripe) or point it "
                           "at PUBLIC_URL"))
    return out


async def check_public_url(config: Config, http: httpx.AsyncClient) -> list[Finding]:
    """Probe `PUBLIC_URL/healthz` and the redirect's path from outside, as Stripe would."""
    base = config.public_url
    try:
        resp = await http.get(f"{base}/healthz")
    except httpx.HTTPError as exc:
        return [Finding(Status.SKIPPED, "PUBLIC_URL",
                        f"nothing answers at {base} ({type(exc).__name__}); is the server "
                        "running?", "start the server (and its proxy), then run doctor again")]
    try:
        ours = resp.json().get("database") is not None
    except ValueError:
        ours = False
    if not ours:
        return [Finding(Status.FAILED, "PUBLIC_URL",
                        f"{base}/healthz answered {resp.status_code} but not as this backend",
                        "route PUBLIC_URL (all paths) to this backend")]
    out = [Finding(Status.OK, "PUBLIC_URL", f"{base} reaches this backend")]
    redirect = config.install_redirect_uri
    if _origin(redirect) == _origin(base):
        try:
            cb = await http.get(redirect, headers={"Accept": "application/json"})
            served = cb.status_code != 404
        except httpx.HTTPError:
            served = False
        out.append(Finding(Status.OK, "STRIPE_INSTALL_REDIRECT_URI", f"{redirect} is served")
                   if served else
                   Finding(Status.FAILED, "STRIPE_INSTALL_REDIRECT_URI",
                           f"{redirect} is not served", "route its path to this backend"))
    return out


# ---- the database -----------------------------------------------------------------------------

def _probe_write(db: Any) -> None:
    with db.atomic() as txn:
        db.execute_sql("CREATE TABLE doctor_write_probe (x INTEGER)")
        db.execute_sql("INSERT INTO doctor_write_probe (x) VALUES (1)")
        txn.rollback()


async def check_database(storage: Storage, apps: Iterable[str] = ()) -> list[Finding]:
    """Writable, and no migration pending: the project's, and `apps`' (`models/migrate.py`)."""
    out: list[Finding] = []
    try:
        await storage.run(_probe_write, storage.db)
        out.append(Finding(Status.OK, "DATABASE_URL", "the database is writable"))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        out.append(Finding(Status.FAILED, "DATABASE_URL", f"cannot write: {first}",
                           "give this process write access to the database (for SQLite, the "
                           "file and its folder)"))
        return out
    try:
        todo = await storage.run(pending, storage.db, apps=tuple(apps))
    except Exception as exc:
        out.append(Finding(Status.FAILED, "DATABASE_URL",
                           f"cannot read the migration history: {type(exc).__name__}",
                           "run python run.py migrate"))
        return out
    if todo:
        out.append(Finding(Status.FAILED, "DATABASE_URL",
                           f"{len(todo)} migration(s) not applied: {', '.join(todo)}",
                           "run python run.py migrate (serve also applies them at start-up)"))
    else:
        out.append(Finding(Status.OK, "DATABASE_URL", "migrations are current"))
    return out


# ---- the Stripe API ---------------------------------------------------------------------------

def required_events(registry: Registry | None) -> list[str]:
    handled = sorted(registry.handlers) if registry is not None else []
    return [*LIFECYCLE_EVENTS, *(t for t in handled if t not in LIFECYCLE_EVENTS)]


def _skew(headers: Mapping[str, str] | None, sent: float, received: float) -> float | None:
    value = _header(headers, "date")
    if not value:
        return None
    try:
        theirs = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    ours = (sent + received) / 2
    # `Date` is truncated to the second: their clock was in [theirs, theirs + 1).
    if ours < theirs:
        return ours - theirs
    if ours > theirs + 1:
        return ours - (theirs + 1)
    return 0.0


@dataclass
class _KeyResult:
    findings: list[Finding] = field(default_factory=list)
    skew: float | None = None
    usable: bool = False
    emulator: bool = False


def _api_error(exc: stripe.StripeError) -> str:
    """The library's message on one line (a finding is one line), at most 200 characters."""
    text = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for k, v in (headers or {}).items():
        if k.lower() == name:
            return v
    return None


async def _check_key(mode: str, key: str, base: str) -> _KeyResult:
    name = f"STRIPE_SECRET_KEY_{mode.upper()}"
    result = _KeyResult()
    client = stripe.StripeClient(key, base_addresses={"api": base},
                                 http_client=stripe.HTTPXClient(timeout=TIMEOUT))
    sent = time.time()
    try:
        balance = await client.v1.balance.retrieve_async()
        headers = balance.last_response.headers if balance.last_response else None
        result.skew = _skew(headers, sent, time.time())
        result.usable = True
        if not _header(headers, "request-id"):  # Stripe stamps every answer; emulators do not
            result.emulator = True
            result.findings.append(Finding(
                Status.SKIPPED, name, f"{base} is not Stripe (an emulator answers for any key)",
                "run doctor against Stripe to check the key"))
        elif bool(balance.to_dict().get("livemode")) != (mode == Mode.LIVE):
            kind = Mode(mode).key_mode
            result.findings.append(Finding(
                Status.FAILED, name, f"Stripe says this key is not a {kind}-mode key",
                f"use the {_where(mode)} key here"))
        else:
            result.findings.append(Finding(
                Status.OK, name, "accepted by Stripe (test mode, as a sandbox's keys are)"
                if mode == Mode.SANDBOX else f"accepted by Stripe ({mode} mode)"))
    except stripe.AuthenticationError as exc:
        result.skew = _skew(exc.headers, sent, time.time())
        result.findings.append(Finding(Status.FAILED, name,
                                       f"refused by {base}: {_api_error(exc)}",
                                       "copy the key again from Dashboard > Developers > API "
                                       "keys (it may have been rolled)"))
    except stripe.PermissionError as exc:
        # A restricted key without balance read: accepted, just not allowed this call.
        result.skew = _skew(exc.headers, sent, time.time())
        result.usable = True
        result.findings.append(Finding(Status.OK, name,
                                       "accepted (a restricted key without balance read)"))
    except stripe.APIConnectionError as exc:
        result.findings.append(Finding(Status.FAILED, "STRIPE_API_BASE",
                                       f"cannot reach {base} (checking {name}): "
                                       f"{_api_error(exc)}",
                                       "check the network, a proxy, or STRIPE_API_BASE"))
    except stripe.StripeError as exc:
        result.skew = _skew(exc.headers, sent, time.time())
        result.findings.append(Finding(Status.SKIPPED, name,
                                       f"{base} could not answer (HTTP {exc.http_status}): "
                                       f"{_api_error(exc)}", "run doctor again later"))
    finally:
        await _close(client)
    return result


async def _account_of(key: str, base: str) -> str | None:
    """The id of the account that owns `key` (`GET /v1/account`); None when it cannot be read
    (a restricted key without account read, an error)."""
    client = stripe.StripeClient(key, base_addresses={"api": base},
                                 http_client=stripe.HTTPXClient(timeout=TIMEOUT))
    try:
        account = await client.v1.accounts.retrieve_current_async()
        return str(account.id) if account.id else None
    except stripe.StripeError:
        return None
    finally:
        await _close(client)


async def check_sandbox_account(config: Config, base: str) -> list[Finding]:
    """The sandbox's key belongs to an account of its own: not the test key's account nor the
    live key's (the test mode of the developer's account has the live account's id, so its
    test key in `_SANDBOX` would serve sandbox installs with the wrong account's data)."""
    name = "STRIPE_SECRET_KEY_SANDBOX"
    key = config.secret_keys.get(Mode.SANDBOX)
    assert key is not None
    sandbox = await _account_of(key, base)
    if sandbox is None:
        return [Finding(Status.SKIPPED, name, "its account cannot be read (GET /v1/account)",
                        "grant the restricted key read access to the account, or run doctor "
                        "with the secret key, to check that it is a sandbox's")]
    others = {m: await _account_of(k, base) for m in (Mode.TEST, Mode.LIVE)
              if (k := config.secret_keys.get(m))}
    for mode, account in others.items():
        if account == sandbox:
            return [Finding(Status.FAILED, name,
                            f"belongs to {sandbox}, the same account as "
                            f"STRIPE_SECRET_KEY_{mode.upper()}: it is that account's test-mode "
                            "key, not a sandbox's",
                            "put the managed sandbox's own key here (Dashboard: switch to the "
                            "sandbox > Developers > API keys)")]
    compared = [m for m, a in others.items() if a is not None]
    if not compared:
        return [Finding(Status.SKIPPED, name, f"belongs to {sandbox}; no test or live key's "
                        "account to compare it with", "set STRIPE_SECRET_KEY_TEST to check that "
                        "the sandbox's key is not the test key's account")]
    return [Finding(Status.OK, name, f"belongs to {sandbox}, an account of its own (not the "
                    f"{' or '.join(str(m) for m in compared)} key's): a sandbox")]


async def _close(client: stripe.StripeClient) -> None:
    http = getattr(getattr(client, "_requestor", None), "_client", None)
    if http is not None and hasattr(http, "close_async"):
        await http.close_async()


async def _check_endpoints(mode: str, key: str, config: Config, base: str,
                           events: list[str]) -> list[Finding]:
    name = f"STRIPE_WEBHOOK_SECRETS_{mode.upper()}"
    target = f"{config.public_url}/webhooks"
    client = stripe.StripeClient(key, base_addresses={"api": base},
                                 http_client=stripe.HTTPXClient(timeout=TIMEOUT))
    create = (f"in the {_where(mode)} Dashboard > Developers > Webhooks, add an endpoint at "
              f"{target} listening to events on connected accounts, with the events "
              f"{', '.join(events)}; put its signing secret in {name}")
    try:
        endpoints = []
        page = await client.v1.webhook_endpoints.list_async({"limit": 100})
        async for endpoint in page.auto_paging_iter():
            endpoints.append(endpoint.to_dict())
    except stripe.PermissionError:
        return [Finding(Status.SKIPPED, name, "the key may not list webhook endpoints",
                        "grant the restricted key read access to Webhook Endpoints")]
    except stripe.StripeError as exc:
        if exc.http_status == 404:
            return [Finding(Status.SKIPPED, name, f"{base} has no /v1/webhook_endpoints "
                            "(an emulator?)", "run doctor against Stripe to check endpoints")]
        return [Finding(Status.SKIPPED, name, f"cannot list webhook endpoints: "
                        f"{_api_error(exc)}", "run doctor again later")]
    finally:
        await _close(client)
    ours = [e for e in endpoints if str(e.get("url", "")).rstrip("/") == target]
    if not ours:
        urls = ", ".join(str(e.get("url")) for e in endpoints) or "none"
        return [Finding(Status.FAILED, name, f"no {_where(mode)} webhook endpoint points at "
                        f"{target} (registered: {urls})", create)]
    out: list[Finding] = []
    for e in ours:
        eid = e.get("id")
        problems, fixes = [], []
        if e.get("status", "enabled") != "enabled":
            problems.append("is disabled")
            fixes.append("enable it")
        if not e.get("connect"):
            problems.append("does not listen to connected accounts (connect: false)")
            fixes.append("create it with 'Events on connected accounts' (a platform-only "
                         "endpoint cannot be switched)")
        enabled = set(e.get("enabled_events") or [])
        missing = [t for t in events if "*" not in enabled and t not in enabled]
        if missing:
            problems.append(f"misses {', '.join(missing)}")
            fixes.append(f"add {', '.join(missing)} to its events")
        if problems:
            out.append(Finding(Status.FAILED, name, f"endpoint {eid} at {target} "
                               + "; ".join(problems), "; ".join(fixes)))
        else:
            out.append(Finding(Status.OK, name, f"endpoint {eid} at {target} listens to "
                               f"connected accounts and to the {len(events)} needed types"))
    return out


async def check_stripe(config: Config, registry: Registry | None) -> list[Finding]:
    base = (config.api_base or STRIPE_API).rstrip("/")
    emulator = False
    out: list[Finding] = []
    skews: list[float] = []
    keyed = [(m, config.secret_keys.get(m)) for m in MODES if config.secret_keys.get(m)]
    if not keyed:
        out.append(Finding(Status.SKIPPED, "STRIPE_SECRET_KEY_LIVE, _TEST",
                           "no key set: nothing to check against the Stripe API",
                           "set the platform keys to let jobs call Stripe"))
        return out
    events = required_events(registry)
    for mode, key in keyed:
        assert key is not None
        result = await _check_key(mode, key, base)
        emulator = emulator or result.emulator
        out.extend(result.findings)
        if result.skew is not None:
            skews.append(result.skew)
        if result.usable and mode == Mode.SANDBOX and not result.emulator:
            out.extend(await check_sandbox_account(config, base))
        if result.usable:
            out.extend(await _check_endpoints(mode, key, config, base, events))
    if skews:
        worst = max(skews, key=abs)
        where = f"{base}'s" if emulator else "Stripe's"
        if abs(worst) > MAX_CLOCK_SKEW:
            out.append(Finding(Status.FAILED, "clock",
                               f"this machine's clock is {worst:+.0f} s off {where} Date "
                               f"header; signatures have a {config.signature_tolerance} s "
                               "tolerance", "synchronise the clock (NTP: systemd-timesyncd "
                               "or chrony)"))
        else:
            out.append(Finding(Status.OK, "clock", f"within {MAX_CLOCK_SKEW:.0f} s of "
                               f"{where} clock"))
    else:
        out.append(Finding(Status.SKIPPED, "clock", "no Date header from the API to compare",
                           "run doctor with a key that reaches Stripe"))
    return out


# ---- all of it --------------------------------------------------------------------------------

async def run_checks(config: Config, storage: Storage | None, registry: Registry | None, *,
                     env: Mapping[str, str] | None = None,
                     probe_public_url: bool = True) -> list[Finding]:
    """Every check, in a stable order. `env` adds the raw-variable checks; `probe_public_url`
    calls `PUBLIC_URL` from here (off in `serve`, which would be calling itself)."""
    findings: list[Finding] = []
    if env is not None:
        findings += check_env(env)
    findings += check_app(config)
    findings += check_urls(config)
    findings += check_sandbox(config)
    if probe_public_url:
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
            findings += await check_public_url(config, http)
    if storage is not None:
        findings += await check_database(storage, app_packages(config))
    findings += await check_stripe(config, registry)
    return findings


@dataclass
class DoctorReport:
    """The latest findings, for the status page (filled by `serve` and by the page's button)."""

    findings: list[Finding] = field(default_factory=list)
    checked_at: float | None = None
    running: bool = False

    async def refresh(self, config: Config, storage: Storage | None,
                      registry: Registry | None) -> list[Finding]:
        self.running = True
        try:
            self.findings = await run_checks(config, storage, registry, probe_public_url=False)
            self.checked_at = time.time()
        except Exception as exc:  # the doctor must never take the service down
            log.warning("doctor could not finish: %s", type(exc).__name__)
            self.findings = [Finding(Status.FAILED, "doctor",
                                     f"the checks stopped: {type(exc).__name__}",
                                     "run python run.py doctor")]
            self.checked_at = time.time()
        finally:
            self.running = False
        return self.findings


async def log_findings(report: DoctorReport, config: Config, storage: Storage | None,
                       registry: Registry | None) -> None:
    """The `serve` hook: run the checks after start-up and log one line each."""
    await asyncio.sleep(0)  # after readiness, never before
    findings = await report.refresh(config, storage, registry)
    for f in findings:
        level = {Status.OK: logging.INFO, Status.SKIPPED: logging.INFO,
                 Status.FAILED: logging.WARNING}[f.status]
        log.log(level, "doctor %s", format_finding(f))
