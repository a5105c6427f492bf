"""Configuration from environment variables (DESIGN.md section 4).

`Config.from_env()` validates everything at start-up. A malformed value raises `ConfigError`
whose message names the variable (never a secret's value); a missing optional value leaves its
feature disabled, and `Config.disabled_features()` says which, one line each, for the log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MODES = ("live", "test")


class ConfigError(ValueError):
    """A malformed environment variable; the message names it."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _secrets(env: Mapping[str, str], name: str, prefixes: tuple[str, ...]) -> tuple[str, ...]:
    values = _split(env.get(name, ""))
    for value in values:
        if not value.startswith(prefixes) or not re.fullmatch(r"[A-Za-z0-9_]+", value):
            raise ConfigError(
                f"{name}: each value must start with {' or '.join(prefixes)} "
                "and contain only letters, digits and underscores"
            )
    return values


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float,
            cast: type = float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise ConfigError(f"{name}: must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return int(_number(env, name, default, low, high, int))


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: must be an http:// or https:// URL, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///var/app.db"
    app_secrets: tuple[str, ...] = ()
    webhook_secrets: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"live": (), "test": ()}
    )
    secret_keys: Mapping[str, str | None] = field(
        default_factory=lambda: {"live": None, "test": None}
    )
    api_base: str | None = None
    app_id: str | None = None
    install_redirect_uri: str = ""
    install_success_url: str | None = None
    signature_tolerance: int = 300
    scheduler: bool = True
    max_body_size: int = 1024 * 1024
    shutdown_timeout: float = 10.0
    db_workers: int = 4
    job_concurrency: int = 10
    rate_limits: Mapping[str, float] = field(default_factory=lambda: {"live": 80.0, "test": 20.0})
    replica_poll_seconds: float = 30.0
    log_format: str = "text"
    log_level: str = "info"
    public_url: str = ""
    operator_token: str | None = None

    def __post_init__(self) -> None:
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")
        if not self.install_redirect_uri:
            object.__setattr__(
                self, "install_redirect_uri", f"{self.public_url}/callback/stripe"
            )

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
        if not self.scheduler:
            lines.append("SCHEDULER=off: this process runs no scheduled jobs")
        if self.app_id and not self.install_redirect_uri.startswith("https://"):
            lines.append(f"STRIPE_INSTALL_REDIRECT_URI is {self.install_redirect_uri}: Stripe "
                         "accepts a non-https redirect for test-mode installs only")
        return lines

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        host = env.get("HOST", "").strip() or "127.0.0.1"
        port = _int(env, "PORT", 8000, 0, 65535)
        database_url = env.get("DATABASE_URL", "").strip() or "sqlite:///var/app.db"
        if not re.match(r"^(sqlite|postgres|postgresql|postgresext)(\+\w+)?://", database_url):
            raise ConfigError("DATABASE_URL: must start with sqlite:// or postgresql://")
        keys = {}
        for mode in MODES:
            name = f"STRIPE_SECRET_KEY_{mode.upper()}"
            found = _secrets(env, name, (f"sk_{mode}_", f"rk_{mode}_"))
            if len(found) > 1:
                raise ConfigError(f"{name}: takes one key, not a list")
            keys[mode] = found[0] if found else None
        public_url = _url(env, "PUBLIC_URL", None)
        if public_url:
            parts = urlsplit(public_url)
            if parts.path.strip("/") or parts.query or parts.fragment:
                raise ConfigError("PUBLIC_URL: must be an origin such as https://app.example.com"
                                  f" (no path), got {public_url!r}")
            public_url = f"{parts.scheme}://{parts.netloc}"
        else:
            public_url = f"http://{host}:{port}"
        token = env.get("OPERATOR_TOKEN", "").strip() or None
        if token is not None and len(token) < 16:
            raise ConfigError("OPERATOR_TOKEN: must be at least 16 characters (make one with "
                              "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        redirect = _url(env, "STRIPE_INSTALL_REDIRECT_URI", None)
        app_id = env.get("STRIPE_APP_ID", "").strip() or None
        if app_id and not re.fullmatch(r"[A-Za-z0-9._-]+", app_id):
            raise ConfigError("STRIPE_APP_ID: must look like com.example.app")
        log_level = _choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error"))
        return cls(
            host=host,
            port=port,
            database_url=database_url,
            app_secrets=_secrets(env, "STRIPE_APP_SECRETS", ("absec_",)),
            webhook_secrets={
                mode: _secrets(env, f"STRIPE_WEBHOOK_SECRETS_{mode.upper()}", ("whsec_",))
                for mode in MODES
            },
            secret_keys=keys,
            api_base=_url(env, "STRIPE_API_BASE", None),
            app_id=app_id,
            install_redirect_uri=redirect or f"{public_url}/callback/stripe",
            install_success_url=_url(env, "INSTALL_SUCCESS_URL", None),
            signature_tolerance=_int(env, "SIGNATURE_TOLERANCE", 300, 1, 86400),
            scheduler=_choice(env, "SCHEDULER", "on", ("on", "off")) == "on",
            max_body_size=_int(env, "MAX_BODY_SIZE", 1024 * 1024, 1024, 64 * 1024 * 1024),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", 10.0, 0.0, 600.0),
            db_workers=_int(env, "DB_WORKERS", 4, 1, 64),
            job_concurrency=_int(env, "JOB_CONCURRENCY", 10, 1, 1000),
            rate_limits={
                "live": _float(env, "STRIPE_RATE_LIMIT_LIVE", 80.0, 0.1, 100.0),
                "test": _float(env, "STRIPE_RATE_LIMIT_TEST", 20.0, 0.1, 25.0),
            },
            replica_poll_seconds=_float(env, "REPLICA_POLL_SECONDS", 30.0, 0.1, 60.0),
            log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
            log_level=log_level,
            public_url=public_url,
            operator_token=token,
        )


#: The variables `python run.py --help` documents, with their defaults.
VARIABLES = [
    ("HOST, PORT", "where to listen", "127.0.0.1, 8000"),
    ("DATABASE_URL", "Peewee database URL", "sqlite:///var/app.db"),
    ("STRIPE_APP_SECRETS", "app signing secrets (absec_...), comma-separated", "none"),
    ("STRIPE_WEBHOOK_SECRETS_LIVE", "live webhook endpoint secrets (whsec_...)", "none"),
    ("STRIPE_WEBHOOK_SECRETS_TEST", "test webhook endpoint secrets (whsec_...)", "none"),
    ("STRIPE_SECRET_KEY_LIVE", "platform key for live per-account calls", "none"),
    ("STRIPE_SECRET_KEY_TEST", "platform key for test per-account calls", "none"),
    ("STRIPE_API_BASE", "Stripe API address, for a local emulator", "Stripe's"),
    ("STRIPE_APP_ID", "the app's id, for install links", "none"),
    ("PUBLIC_URL", "the backend's public origin (https in production)", "http://HOST:PORT"),
    ("STRIPE_INSTALL_REDIRECT_URI", "the install callback URL", "PUBLIC_URL/callback/stripe"),
    ("INSTALL_SUCCESS_URL", "where to send the browser after an install", "a plain page"),
    ("SIGNATURE_TOLERANCE", "seconds a signature stays valid", "300"),
    ("SCHEDULER", "on or off for this process", "on"),
    ("MAX_BODY_SIZE", "largest request body in bytes (413 above)", "1048576"),
    ("SHUTDOWN_TIMEOUT", "seconds to let in-flight requests finish", "10"),
    ("DB_WORKERS", "database threads (the event loop never blocks on the database)", "4"),
    ("JOB_CONCURRENCY", "job runs at once in this process", "10"),
    ("STRIPE_RATE_LIMIT_LIVE, _TEST", "Stripe calls per second per mode", "80, 20"),
    ("REPLICA_POLL_SECONDS", "how often installs made by other replicas are read", "30"),
    ("OPERATOR_TOKEN", "the operator's secret for /status (16+ characters)", "none: 503"),
    ("LOG_FORMAT, LOG_LEVEL", "text or json; debug, info, warning, error", "text, info"),
]
