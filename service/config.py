"""Configuration from environment variables (README, "Configuration").

Each variable is declared once, on the `Config` field it fills: `setting(...)` or, for a
`_LIVE`/`_TEST` pair, `per_mode(...)` gives its name, parser, default and help text (a little
markdown: backticks only). Everything else is derived from those declarations: `Config()` has the
defaults, `Config.from_env()` reads and validates every variable, `VARIABLES` is the table
`python run.py --help` prints, and `markdown_table()` is the README's Configuration table
(tests/test_config.py fails when the README differs; paste the output of
`python -c "from service.config import markdown_table; print(markdown_table())"`).

`Config.from_env()` validates everything at start-up. A malformed value raises `ConfigError`
whose message names the variable (never a secret's value); a missing optional value leaves its
feature disabled, and `Config.disabled_features()` says which, one line each, for the log.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar
from urllib.parse import urlsplit

from models.db import SQLITE_SYNCHRONOUS
from models.enums import MODES, Mode
from models.tasks import DEFAULT_BOUNDS
from service.loops import EVENT_LOOPS, resolve

T = TypeVar("T")
N = TypeVar("N", int, float)

#: Turns a variable's value (stripped, never empty) into a field value: `(name, value) -> value`.
#: It raises `ConfigError` naming the variable, and never puts a secret's value in the message.
Parser: TypeAlias = Callable[[str, str], T]


class ConfigError(ValueError):
    """A malformed environment variable; the message names it."""


# -- parsers ---------------------------------------------------------------------------------


def _text(name: str, raw: str) -> str:
    return raw


@dataclass(frozen=True)
class _Pattern:
    """A value that must match `pattern` from its start (or whole, with `full`)."""

    pattern: str
    message: str
    full: bool = False

    def __call__(self, name: str, raw: str) -> str:
        match = re.fullmatch if self.full else re.match
        if not match(self.pattern, raw):
            raise ConfigError(f"{name}: {self.message}")
        return raw


@dataclass(frozen=True)
class _Number(Generic[N]):
    """A whole number (`cast=int`) or a number (`cast=float`) from `low` to `high`."""

    low: N
    high: N
    cast: Callable[[str], N]
    kind: str

    def __call__(self, name: str, raw: str) -> N:
        try:
            value = self.cast(raw)
        except ValueError:
            raise ConfigError(f"{name}: must be {self.kind}, got {raw!r}") from None
        if not self.low <= value <= self.high:
            raise ConfigError(f"{name}: must be between {self.low} and {self.high}, got {value}")
        return value


def _Int(low: int, high: int) -> _Number[int]:  # noqa: N802 (reads like the class it makes)
    return _Number(low, high, int, "a whole number")


def _Float(low: float, high: float) -> _Number[float]:  # noqa: N802
    return _Number(low, high, float, "a number")


@dataclass(frozen=True)
class _Choice:
    choices: tuple[str, ...]

    def __call__(self, name: str, raw: str) -> str:
        value = raw.lower()
        if value not in self.choices:
            raise ConfigError(f"{name}: must be one of {', '.join(self.choices)}, got {value!r}")
        return value


def _fernet_keys(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated Fernet keys (32 url-safe base64 bytes each); the first encrypts."""
    from cryptography.fernet import Fernet

    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(f"{name}: key {i} is not a Fernet key (32 url-safe base64-encoded "
                              "bytes, as Fernet.generate_key() makes)") from None
    return keys


def _names(name: str, raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", value):
            raise ConfigError(f"{name}: {value!r} is not a role id")
    return values


def _packages(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated importable package names (`acme_app`) or package directories (a path)."""
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    for value in values:
        if not (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", value)
                or "/" in value or os.sep in value):
            raise ConfigError(f"{name}: {value!r} is neither a package name nor a path to a "
                              "package directory")
    return values


def _switch(name: str, raw: str) -> bool:
    return _Choice(("on", "off"))(name, raw) == "on"


def _workers(name: str, raw: str) -> int:
    """A number of processes, or `auto`: one per core."""
    if raw.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return _Int(1, 256)(name, raw)


def _event_loop(name: str, raw: str) -> str:
    """One of `EVENT_LOOPS`; `uvloop` only where it is installed."""
    choice = _Choice(EVENT_LOOPS)(name, raw)
    try:
        resolve(choice)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return choice


def _database_url(name: str, raw: str) -> str:
    """A Peewee URL that `open_database` can open; the common slips get a message with the fix
    (a PostgreSQL URL may hold a password, so only SQLite values are echoed)."""
    if not re.match(r"(sqlite|postgres|postgresql|postgresext)(\+\w+)?://", raw):
        raise ConfigError(f"{name}: must start with sqlite:// or postgresql://")
    if raw.startswith("sqlite") and urlsplit(raw).netloc:
        path = raw.split("://", 1)[1]
        raise ConfigError(
            f"{name}: {raw!r} has two slashes, so {path.split('/')[0]!r} would be read as a "
            f"host; write sqlite:///{path} for a path relative to the working directory, or "
            "sqlite:////absolute/path/app.db for an absolute one")
    return raw


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: must be an http:// or https:// URL, got {raw!r}")
    return raw


def _origin(name: str, raw: str) -> str:
    """An http(s) origin with no path: `https://app.example.com` (a trailing / is dropped)."""
    parts = urlsplit(_url(name, raw))
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"{name}: must be an origin such as https://app.example.com"
                          f" (no path), got {raw!r}")
    return f"{parts.scheme}://{parts.netloc}"


#: The weakest `OPERATOR_TOKEN` accepted: this many characters, and this many bits by
#: `estimated_bits` (`secrets.token_urlsafe(32)` makes 43 characters of about 200).
OPERATOR_TOKEN_CHARS, OPERATOR_TOKEN_BITS = 32, 128
MAKE_TOKEN = "python -c \"import secrets; print(secrets.token_urlsafe(32))\""


def estimated_bits(secret: str) -> float:
    """A secret's entropy as its length times the Shannon entropy of its characters'
    frequencies: low for short, repetitive or small-alphabet values (`password12345678` is
    about 60). A heuristic: a random value scores high, and so may a long phrase."""
    n = len(secret)
    return -sum(c / n * math.log2(c / n) for c in Counter(secret).values()) * n


def _operator_token(name: str, raw: str) -> str:
    # never echoed: it is a secret
    if len(raw) < OPERATOR_TOKEN_CHARS or estimated_bits(raw) < OPERATOR_TOKEN_BITS:
        raise ConfigError(f"{name}: too weak: it must be at least {OPERATOR_TOKEN_CHARS} "
                          f"random characters (an estimated {OPERATOR_TOKEN_BITS} bits or "
                          f"more); make one with {MAKE_TOKEN}")
    return raw


@dataclass(frozen=True)
class _Secrets:
    """Comma-separated secrets, each starting with one of `prefixes`."""

    prefixes: tuple[str, ...]

    def __call__(self, name: str, raw: str) -> tuple[str, ...]:
        values = tuple(part.strip() for part in raw.split(",") if part.strip())
        for value in values:
            if not value.startswith(self.prefixes) or not re.fullmatch(r"[A-Za-z0-9_]+", value):
                raise ConfigError(
                    f"{name}: each value must start with {' or '.join(self.prefixes)} "
                    "and contain only letters, digits and underscores"
                )
        return values


@dataclass(frozen=True)
class _SecretKey:
    """One secret or restricted key of `mode` (a sandbox's keys are test-mode keys:
    `sk_test_`, `rk_test_`)."""

    mode: str

    def __call__(self, name: str, raw: str) -> str | None:
        kind = Mode(self.mode).key_mode
        found = _Secrets((f"sk_{kind}_", f"rk_{kind}_"))(name, raw)
        if len(found) > 1:
            raise ConfigError(f"{name}: takes one key, not a list")
        return found[0] if found else None


# -- declarations ----------------------------------------------------------------------------

_ENV = "env"  # the key of a Config field's metadata that holds its declaration


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: its name, parser, default and help (markdown: backticks)."""

    name: str
    parse: Parser[T]
    default: T
    help: str
    shown_default: str  # the default as documented, markdown

    def read(self, env: Mapping[str, str]) -> T:
        raw = env.get(self.name, "").strip()
        return self.parse(self.name, raw) if raw else self.default


@dataclass(frozen=True)
class PerMode(Generic[T]):
    """A `_LIVE`/`_TEST`/`_SANDBOX` set filling one field, a mapping from mode to value."""

    prefix: str
    variables: Mapping[str, Variable[T]]

    def read(self, env: Mapping[str, str]) -> dict[str, T]:
        return {mode: var.read(env) for mode, var in self.variables.items()}


def _show(value: object) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def setting(name: str, default: T, parse: Parser[T], help: str,
            shown_default: str | None = None) -> T:
    """A `Config` field filled from the variable `name` (`default` when unset or empty)."""
    shown = _show(default) if shown_default is None else shown_default
    var = Variable(name, parse, default, help, shown)
    return field(default=default, metadata={_ENV: var})


def per_mode(prefix: str, defaults: Mapping[str, T], parsers: Mapping[str, Parser[T]],
             help: str) -> Mapping[str, T]:
    """A `Config` field mapping each mode to the value of `{prefix}_{MODE}`."""
    pair = PerMode(prefix, {
        mode: Variable(f"{prefix}_{mode.upper()}", parsers[mode], defaults[mode], help,
                       _show(defaults[mode]))
        for mode in MODES
    })
    return field(default_factory=lambda: {mode: defaults[mode] for mode in MODES},
                 metadata={_ENV: pair})


# -- the configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    host: str = setting("HOST", "127.0.0.1", _text, "address to listen on")
    port: int = setting("PORT", 8000, _Int(0, 65535), "port to listen on")
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///var/app.db",
        _database_url,
        "Peewee database URL: `sqlite:///path` or `postgresql://user@host/db`")
    app_packages: tuple[str, ...] = setting(
        "APP_PACKAGES", (), _packages,
        "your app: comma-separated package names or package directories (`run.py --app` "
        "wins); see docs/apps.md", "the example app")
    app_secrets: tuple[str, ...] = setting(
        "STRIPE_APP_SECRETS", (), _Secrets(("absec_",)), "app signing secrets (`absec_...`)")
    webhook_secrets: Mapping[str, tuple[str, ...]] = per_mode(
        "STRIPE_WEBHOOK_SECRETS", dict.fromkeys(MODES, ()),
        dict.fromkeys(MODES, _Secrets(("whsec_",))),
        "webhook endpoint secrets (`whsec_...`) per mode; `_SANDBOX`: those of the managed "
        "sandbox's endpoints (docs/deploy.md, Sandboxes)")
    secret_keys: Mapping[str, str | None] = per_mode(
        "STRIPE_SECRET_KEY", dict.fromkeys(MODES, None), {m: _SecretKey(m) for m in MODES},
        "platform key per mode for per-account calls (`sk_...` or `rk_...`); `_SANDBOX`: the "
        "managed sandbox's key (`sk_test_...`, not the test key)")
    api_base: str | None = setting(
        "STRIPE_API_BASE", None, _url, "Stripe API address, e.g. a local emulator", "Stripe's")
    app_id: str | None = setting(
        "STRIPE_APP_ID", None,
        _Pattern(r"[A-Za-z0-9._-]+", "must look like com.example.app", full=True),
        "the app's id, for install links")
    # Empty means derived from host and port, in __post_init__.
    public_url: str = setting(
        "PUBLIC_URL", "", _origin,
        "the backend's public origin (https in production): install links, the redirect "
        "default, `doctor`, `manifest`", "`http://HOST:PORT`")
    # Empty means derived from the public URL, in __post_init__.
    install_redirect_uri: str = setting(
        "STRIPE_INSTALL_REDIRECT_URI", "", _url,
        "the install callback, as in `allowed_redirect_uris`", "`PUBLIC_URL/callback/stripe`")
    install_success_url: str | None = setting(
        "INSTALL_SUCCESS_URL", None, _url, "where the browser goes after an install",
        "a plain page")
    signature_tolerance: int = setting(
        "SIGNATURE_TOLERANCE", 300, _Int(1, 86400),
        "seconds a signature stays valid (both directions)")
    scheduler: bool = setting(
        "SCHEDULER", True, _switch, "`on`/`off`: whether this process runs scheduled jobs")
    install_sync: bool = setting(
        "INSTALL_SYNC", True, _switch,
        "`on`/`off`: reconcile installs with Stripe's Install API at start-up and daily")
    max_body_size: int = setting(
        "MAX_BODY_SIZE", 1024 * 1024, _Int(1024, 64 * 1024 * 1024),
        "request body limit in bytes (413 above)")
    # 64 MiB: a small VM (512 MiB to 1 GiB) keeps room for the process itself (about 100 MB)
    # and its database cache while 64 bodies of the default MAX_BODY_SIZE are half-received;
    # without a bound, MAX_CONNECTIONS stalled 1 MiB bodies would pin 10 GiB.
    max_buffered_bytes: int = setting(
        "MAX_BUFFERED_BYTES", 64 * 1024 * 1024, _Int(64 * 1024, 1 << 40),
        "bytes of unfinished request bodies held per process; past it new bodies get 503 "
        "with `Retry-After` (Stripe retries); keep it at least `MAX_BODY_SIZE`")
    max_connections: int = setting(
        "MAX_CONNECTIONS", 10000, _Int(1, 1_000_000),
        "open client connections per process; more are refused at once")
    workers: int = setting(
        "WORKERS", 1, _workers,
        "server processes accepting on the one port (`auto`: one per core); only the first "
        "runs the scheduler")
    shutdown_timeout: float = setting(
        "SHUTDOWN_TIMEOUT", 10.0, _Float(0.0, 600.0),
        "seconds in-flight requests and jobs get on SIGTERM")
    event_loop: str = setting(
        "EVENT_LOOP", "auto", _event_loop,
        "the event loop: `uvloop` (faster webhook ingest, docs/performance.md), `asyncio`, or "
        "`auto`: uvloop when it is installed (it is a dependency), else asyncio")
    db_workers: int = setting(
        "DB_WORKERS", 4, _Int(1, 64),
        "database threads (the event loop never blocks on the database)")
    sqlite_synchronous: str = setting(
        "SQLITE_SYNCHRONOUS", "normal", _Choice(SQLITE_SYNCHRONOUS),
        "SQLite's `synchronous` (WAL): `normal`, an acknowledged webhook survives a crash of "
        "the process, not a power cut; `full`, a power cut too (slower commits)")
    job_concurrency: int = setting(
        "JOB_CONCURRENCY", 10, _Int(1, 1000), "job runs at once per process")
    task_concurrency: int = setting(
        "TASK_CONCURRENCY", 10, _Int(0, 1000),
        "long-running task runs at once per process (`0`: this process runs none)")
    task_lease_seconds: float = setting(
        "TASK_LEASE_SECONDS", 10.0, _Float(1.0, 600.0),
        "lease of a running task: a task whose process died is taken up again after this")
    task_max_pending: int = setting(
        "TASK_MAX_PENDING", DEFAULT_BOUNDS.max_pending, _Int(1, 100000),
        "unfinished tasks an account may have; more starts answer 429")
    task_starts_per_minute: int = setting(
        "TASK_STARTS_PER_MINUTE", DEFAULT_BOUNDS.per_minute, _Int(1, 1_000_000),
        "tasks an account may start in a minute; more starts answer 429 with `Retry-After`")
    task_max_stored_bytes: int = setting(
        "TASK_MAX_STORED_BYTES", DEFAULT_BOUNDS.stored_bytes, _Int(64 * 1024, 2**40),
        "bytes an account's stored tasks may take (inputs, results, errors, 256 a row); a start "
        "past it answers 429 until retention prunes old tasks", "`10485760` (10 MiB)")
    rate_limits: Mapping[str, float] = per_mode(
        "STRIPE_RATE_LIMIT", {"live": 80.0, "test": 20.0, "sandbox": 20.0},
        {"live": _Float(0.1, 100.0), "test": _Float(0.1, 25.0), "sandbox": _Float(0.1, 25.0)},
        "Stripe calls per second per mode and process")
    replica_poll_seconds: float = setting(
        "REPLICA_POLL_SECONDS", 30.0, _Float(0.1, 60.0),
        "the longest before installs changed by other processes are read (a change is "
        "usually read within a second: the database tells)")
    retention_days: float = setting(
        "RETENTION_DAYS", 30.0, _Float(0.0001, 36500.0),
        "processed events, finished job runs and finished tasks older than this many days are "
        "pruned (decimals allowed; failed and dead events and failed tasks are kept three "
        "times longer)")
    log_format: str = setting(
        "LOG_FORMAT", "text", _Choice(("text", "json")), "log lines as `text` or `json`")
    log_level: str = setting(
        "LOG_LEVEL", "info", _Choice(("debug", "info", "warning", "error")),
        "lowest level logged: `debug`, `info`, `warning` or `error`")

    operator_token: str | None = setting(
        "OPERATOR_TOKEN", None, _operator_token,
        "the operator's secret for `/status`: 32+ random characters (an estimated 128+ bits; "
        "make one with `secrets.token_urlsafe(32)`); unset: `/status` answers 503")
    credentials_keys: tuple[str, ...] = setting(
        "CREDENTIALS_KEYS", (), _fernet_keys,
        "Fernet keys for the credentials vault, comma-separated: the first encrypts, all decrypt")
    credential_roles: tuple[str, ...] = setting(
        "CREDENTIAL_ROLES", ("admin", "super_admin"), _names,
        "role ids allowed to set or delete an account's credentials", "`admin,super_admin`")
    credentials_max_per_mode: int = setting(
        "CREDENTIALS_MAX_PER_MODE", 100, _Int(1, 100_000),
        "credentials an account may store per mode; setting a new name past it answers 429")
    #: Variables of the environment read that look like settings but are none (`unknown_
    #: variables`): said once at start-up (`ignored_variables`), never an error.
    unknown: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_modes_apart()
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")
        if not self.install_redirect_uri:
            object.__setattr__(self, "install_redirect_uri", f"{self.public_url}/callback/stripe")

    def _check_modes_apart(self) -> None:
        """No webhook secret or platform key serves two modes: the mode of an event is the
        mode of the secret that verified it, so a secret shared by the test and sandbox
        endpoints (or a key) would make one mode's events or calls the other's."""
        seen: dict[str, str] = {}
        for mode in MODES:
            for secret in self.webhook_secrets.get(mode, ()):
                if seen.setdefault(secret, mode) != mode:
                    raise ConfigError(
                        f"STRIPE_WEBHOOK_SECRETS_{mode.upper()}: a secret is also in "
                        f"STRIPE_WEBHOOK_SECRETS_{seen[secret].upper()}; each mode's endpoints "
                        "have their own secrets")
        keys: dict[str, str] = {}
        for mode in MODES:
            key = self.secret_keys.get(mode)
            if key and keys.setdefault(key, mode) != mode:
                raise ConfigError(
                    f"STRIPE_SECRET_KEY_{mode.upper()} is the same key as "
                    f"STRIPE_SECRET_KEY_{keys[key].upper()}; the managed sandbox has its own key")

    @property
    def sandbox_configured(self) -> bool:
        """Sandbox installs are served: the managed sandbox's key or webhook secrets are set
        (`manifest` then sets `sandbox_install_compatible`)."""
        return bool(self.secret_keys.get(Mode.SANDBOX) or self.webhook_secrets.get(Mode.SANDBOX))

    @property
    def callback_path(self) -> str:
        return urlsplit(self.install_redirect_uri).path or "/callback/stripe"

    @property
    def cookie_secure(self) -> bool:
        """Install-state cookies are `Secure` whenever the callback is served over https."""
        return self.install_redirect_uri.startswith("https://")

    def disabled_features(self) -> list[str]:
        """One human line per optional feature that is off because its variable is unset."""
        lines = []
        if not self.app_secrets:
            lines.append("STRIPE_APP_SECRETS unset: signed /api requests and install "
                         "callbacks answer 503")
        for mode in MODES:
            if mode == Mode.SANDBOX and not self.sandbox_configured:
                lines.append("STRIPE_SECRET_KEY_SANDBOX and STRIPE_WEBHOOK_SECRETS_SANDBOX unset: "
                             "sandbox installs are not served (docs/deploy.md, Sandboxes)")
                continue
            if not self.webhook_secrets[mode]:
                lines.append(f"STRIPE_WEBHOOK_SECRETS_{mode.upper()} unset: no {mode}-mode "
                             "webhook secret")
            if not self.secret_keys[mode]:
                lines.append(f"STRIPE_SECRET_KEY_{mode.upper()} unset: {mode}-mode jobs "
                             "cannot call the Stripe API")
        if not self.app_id:
            lines.append("STRIPE_APP_ID unset: GET /install answers 503")
        if not self.operator_token:
            lines.append("OPERATOR_TOKEN unset: GET /status answers 503")
        if not self.credentials_keys:
            lines.append("CREDENTIALS_KEYS unset: /api/credentials and /api/oauth answer 503")
        if not self.scheduler:
            lines.append("SCHEDULER=off: this process runs no scheduled jobs")
        if self.app_id and not self.install_redirect_uri.startswith("https://"):
            lines.append(f"STRIPE_INSTALL_REDIRECT_URI is {self.install_redirect_uri}: Stripe "
                         "accepts a non-https redirect for test-mode installs only")
        return lines

    def ignored_variables(self) -> list[str]:
        """One warning line per variable that looks like a setting but is none, naming the
        setting meant (`unknown_variables`)."""
        return [ignored_line(name) for name in self.unknown]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Every declared variable read from `env` (default `os.environ`) and validated."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            f.name: f.metadata[_ENV].read(env) for f in fields(cls) if _ENV in f.metadata
        }
        return cls(**values, unknown=unknown_variables(env))


# -- variables that look like settings -------------------------------------------------------


def _prefix(name: str) -> str:
    return name.split("_", 1)[0] + "_" if "_" in name else ""


def unknown_variables(env: Mapping[str, str]) -> tuple[str, ...]:
    """The names in `env` that begin with the prefix of a declared variable (`STRIPE_`,
    `TASK_`, `SQLITE_`, ...: derived from the declarations) but are not declared, sorted:
    `STRIPE_APP_SECRET` for `STRIPE_APP_SECRETS` is read by nothing, silently."""
    known = {var.name for var in variables()}
    prefixes = {_prefix(name) for name in known} - {""}
    return tuple(sorted(name for name in env
                        if name not in known and _prefix(name) in prefixes))


#: How alike (difflib's ratio) a declared name must be to be suggested for an unknown one; a
#: second suggestion must be nearly as close as the first (a `_LIVE`/`_TEST` pair).
CLOSE = 0.7

#: Names used elsewhere for a setting (the Stripe CLI's `STRIPE_API_KEY`), and the settings meant.
_ALIASES: dict[str, tuple[str, ...]] = {
    "STRIPE_API_KEY": ("STRIPE_SECRET_KEY_TEST", "STRIPE_SECRET_KEY_LIVE"),
}


def ignored_line(name: str) -> str:
    """What to tell of an unknown variable `name`: the declared ones it is closest to
    (`difflib`), else the declared ones with its prefix."""
    import difflib

    known = [var.name for var in variables()]
    scored = sorted(((difflib.SequenceMatcher(None, name, other).ratio(), other)
                     for other in known), reverse=True)
    best = scored[0][0]
    close = list(_ALIASES.get(name, ())) or [
        other for score, other in scored if score >= max(CLOSE, best - 0.05)][:2]
    if close:
        hint = "did you mean " + " or ".join(close) + "?"
    else:
        same = [other for other in known if _prefix(other) == _prefix(name)]
        hint = f"the {_prefix(name)}* settings are {', '.join(same)}"
    return f"{name} is set but is not a setting of this backend (ignored); {hint}"


# -- derived documentation -------------------------------------------------------------------


#: The app that runs when none is named: the examples that ship with the project.
EXAMPLE_APP = "example_app"


def app_packages(config: Config) -> tuple[str, ...]:
    """The app the backend runs: `config.app_packages`, or the shipped example app."""
    return config.app_packages or (EXAMPLE_APP,)


def declarations() -> list[Variable[Any] | PerMode[Any]]:
    """Each declaration on a `Config` field, in field order."""
    return [f.metadata[_ENV] for f in fields(Config) if _ENV in f.metadata]


def variables() -> list[Variable[Any]]:
    """Every environment variable `Config.from_env` reads, pairs as two."""
    found: list[Variable[Any]] = []
    for decl in declarations():
        found.extend(decl.variables.values() if isinstance(decl, PerMode) else [decl])
    return found


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


class HelpRow(NamedTuple):
    name: str
    meaning: str
    default: str


#: The variables `python run.py --help` documents, one row each, with their defaults.
VARIABLES = tuple(
    HelpRow(var.name, _plain(var.help), _plain(var.shown_default)) for var in variables()
)


def markdown_table() -> str:
    """The README's Configuration table: one row per declaration, a pair on one row."""
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for decl in declarations():
        if isinstance(decl, PerMode):
            first, *rest = decl.variables.values()
            names = ", ".join([f"`{first.name}`"]
                              + [f"`{var.name.removeprefix(decl.prefix)}`" for var in rest])
            shown = [var.shown_default for var in decl.variables.values()]
            default = shown[0] if len(set(shown)) == 1 else ", ".join(shown)
            lines.append(f"| {names} | {first.help} | {default} |")
        else:
            lines.append(f"| `{decl.name}` | {decl.help} | {decl.shown_default} |")
    return "\n".join(lines)
