"""`run.py dev`: the backend with development secrets and the localstripe emulator as Stripe.

Secrets are generated once and kept in `var/dev.env` (so `run.py simulate` in another shell
signs with the same ones, and a restart keeps them); variables already set in the environment
win. The emulator is started on `--stripe-port` unless something already answers there; it keeps
its data in `var/dev-localstripe.pickle` (its own file, see `cli/emulator.py`). The Install
API fake keeps the installs `run.py simulate` registers in `var/dev-installs.json` (0600), so
the install sync at start-up and `installs sync --dev` find them after a restart. Both children
exit when dev does, even when it is killed (`cli.devtools.start_child`). Never use this mode
with real Stripe keys.

Sandboxes: dev gives the managed sandbox its own key (`STRIPE_SECRET_KEY_SANDBOX`, a
`sk_test_` key other than the test one) and webhook secret (`STRIPE_WEBHOOK_SECRETS_SANDBOX`),
added to a `var/dev.env` from before them, and the Install API fake lists the installs made
with that key as the sandbox's, so `run.py simulate install --sandbox` goes end to end.

Dev keeps its own database, `var/dev.db` (unless `DATABASE_URL` is set), so a fake `acct_demo`
never lands in the real server's `var/app.db`. Each start writes the database, the address
of the Stripe stand-in (`STRIPE_API_BASE`, the Install API fake in front of the emulator) and
the port the backend listens on (`PORT`: the environment's, else the default) into
`var/dev.env` too, so that `run.py simulate`, `run.py <command> --dev` (`dev_config()`) or a
shell that sources the file talks to the same backend, database and fake Stripe as the running
`run.py dev`: after `PORT=8123 run.py dev`, a second shell needs no `PORT`.

A port already taken stops dev before it starts anything, with the way out: `PORT=...` for the
backend, `--stripe-port` for the emulator (unless what answers there is a Stripe emulator,
which dev then uses).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cli import emulator, fake_installs
from cli.serve import run_server
from models.enums import Mode
from service.config import Config
from service.manifest import connect_src

#: The development environment file: written by `run.py dev`, read by `run.py simulate` and
#: by every command given `--dev`.
DEV_ENV = "var/dev.env"

#: The emulator's port unless `--stripe-port` says another.
STRIPE_PORT = 8420

#: The development database, apart from the real server's default `var/app.db`.
DEV_DATABASE_URL = "sqlite:///var/dev.db"


class DevEnvError(Exception):
    """`--dev` was given but the development environment is not usable; the message says why."""


def add_parser(sub: Any) -> None:
    dev = sub.add_parser("dev", help="run with development secrets and a local Stripe emulator")
    dev.add_argument("--stripe-port", type=int, default=STRIPE_PORT,
                     help=f"port of the localstripe emulator (default {STRIPE_PORT}; an "
                          "emulator already answering there is used)")
    dev.add_argument("--installs-port", type=int, default=0,
                     help="port of the Install API fake (default: any free port)")
    dev.set_defaults(func=run_dev)


def load_dev_env(path: str = DEV_ENV) -> dict[str, str]:
    """The variables in the development environment file; empty when there is none."""
    values: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if "=" in line and not line.startswith("#"):
                    key, _, value = line.strip().partition("=")
                    values[key] = value
    except FileNotFoundError:
        pass
    return values


def write_dev_env(values: dict[str, str], path: str = DEV_ENV) -> None:
    """Write the development environment file, readable by its owner only (0600), also when
    an older version left it world-readable."""
    write_private(path, "# development secrets written by `run.py dev`; never use in "
                  "production\n" + "".join(f"{k}={v}\n" for k, v in values.items()))


def dev_config(path: str = DEV_ENV) -> Config:
    """The configuration `run.py <command> --dev` runs with: the environment over the dev
    environment file, on the dev database, against the dev Stripe stand-in."""
    values = load_dev_env(path)
    if not values:
        raise DevEnvError(f"--dev: no {path} here; run `run.py dev` once first (in this folder)")
    values.setdefault("DATABASE_URL", DEV_DATABASE_URL)
    if "STRIPE_API_BASE" not in values and "STRIPE_API_BASE" not in os.environ:
        raise DevEnvError(f"--dev: {path} has no STRIPE_API_BASE (written by an older "
                          "`run.py dev`); start `run.py dev` once to add it")
    config = config_over_dev_env(values)
    base = urlsplit(config.api_base or "")
    if base.hostname in ("127.0.0.1", "localhost") and base.port and not _port_open(base.port):
        print(f"--dev: nothing answers at {config.api_base} (is `run.py dev` running?)",
              file=sys.stderr)
    return config


def config_over_dev_env(values: dict[str, str]) -> Config:
    """The configuration from the environment, taking `values` (the dev environment file's)
    for the variables the environment does not set."""
    return Config.from_env({**values, **os.environ})


def write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (0600) from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as f:
        f.write(text)


def shown_configuration(values: dict[str, str], env: Mapping[str, str]) -> list[str]:
    """The lines `run.py dev` prints: the development values it generated; a variable the
    environment sets instead is named, never shown (it may be a real key)."""
    return [f"  {key}: set in the environment (not shown)" if env.get(key, values[key])
            != values[key] else f"  {key}={values[key]}" for key in sorted(values)]


def _generate() -> dict[str, str]:
    return {
        "STRIPE_APP_SECRETS": "absec_dev" + secrets.token_hex(16),
        "STRIPE_WEBHOOK_SECRETS_LIVE": "whsec_devlive" + secrets.token_hex(16),
        "STRIPE_WEBHOOK_SECRETS_TEST": "whsec_devtest" + secrets.token_hex(16),
        "STRIPE_SECRET_KEY_LIVE": "sk_live_dev" + secrets.token_hex(8),
        "STRIPE_SECRET_KEY_TEST": "sk_test_dev" + secrets.token_hex(8),
        **_sandbox(),
        "STRIPE_APP_ID": "com.example.devapp",
        "CREDENTIALS_KEYS": _fernet_key(),
    }


def _sandbox() -> dict[str, str]:
    """The managed sandbox's development key and webhook secret."""
    return {"STRIPE_WEBHOOK_SECRETS_SANDBOX": "whsec_devsandbox" + secrets.token_hex(16),
            "STRIPE_SECRET_KEY_SANDBOX": "sk_test_devsandbox" + secrets.token_hex(8)}


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


#: The dev emulator keeps its customers and balances here, across restarts of `run.py dev`
#: (its own file, never localstripe's machine-wide /tmp/localstripe.pickle).
EMULATOR_STATE = "var/dev-localstripe.pickle"


def _is_stripe_emulator(port: int) -> bool:
    """Whether what answers on `port` speaks the Stripe API (lists customers for a test key)."""
    import httpx

    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/customers", params={"limit": 1},
                         auth=("sk_test_dev", ""), timeout=3)
        return resp.status_code == 200 and resp.json().get("object") == "list"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def start_emulator(port: int) -> subprocess.Popen[str] | None:
    if _port_open(port):
        if not _is_stripe_emulator(port):
            raise SystemExit(f"port {port} is taken by something that is not a Stripe "
                             "emulator: start dev with --stripe-port N (a free port)")
        print(f"localstripe: already answering on port {port} (used as it is; another: "
              "--stripe-port N)")
        return None
    try:
        proc, url = emulator.start(port, state=os.path.abspath(EMULATOR_STATE))
    except RuntimeError as exc:
        raise SystemExit(f"{exc} (another port: --stripe-port N)") from None
    print(f"localstripe: started at {url} (pid {proc.pid}, data in {EMULATOR_STATE}; "
          "another port: --stripe-port N)")
    return proc


def backend_port(values: dict[str, str]) -> int:
    """The port dev's backend listens on: `PORT` from the environment, else the default (never
    the one an earlier start wrote to the file: the file says where dev runs now)."""
    return config_over_dev_env({k: v for k, v in values.items() if k != "PORT"}).port


#: The dev Install API fake keeps its installs here, across restarts of `run.py dev`.
INSTALLS_STATE = "var/dev-installs.json"


def start_fake_installs(port: int, upstream: str, sandbox_key: str | None = None
                        ) -> tuple[subprocess.Popen[str], str]:
    """The Install API fake (cli/fake_installs.py) in front of the emulator: the backend's
    `STRIPE_API_BASE`, answering `/v1/apps/installs` and forwarding the rest; `sandbox_key`
    sees the sandbox's installs."""
    try:
        proc, url = fake_installs.start(port, upstream, state=os.path.abspath(INSTALLS_STATE),
                                        sandbox_keys=(sandbox_key,) if sandbox_key else ())
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    print(f"Install API fake: started at {url} (pid {proc.pid}), forwarding to {upstream}, "
          f"installs in {INSTALLS_STATE}")
    return proc, url


def _exit_on_sigterm(_sig: int, _frame: Any) -> None:
    raise SystemExit(0)


def run_dev(_config: Config, args: argparse.Namespace) -> int:
    """The configuration comes from the environment over the dev environment file, not from
    `_config` (the environment alone)."""
    # Until the server's own handler is in place, SIGTERM ends dev through the `finally` below
    # (which stops the children) rather than at once.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.makedirs(os.path.dirname(DEV_ENV), exist_ok=True)
    values = load_dev_env() or _generate()
    values.setdefault("CREDENTIALS_KEYS", _fernet_key())  # a dev.env from before the vault
    values.setdefault("DATABASE_URL", DEV_DATABASE_URL)
    for key, value in _sandbox().items():  # a dev.env from before sandboxes
        values.setdefault(key, value)
    port = backend_port(values)
    if port and _port_open(port):
        raise SystemExit(f"port {port} is taken: start dev on another, e.g. `PORT=8123 "
                         ".venv/bin/python run.py dev` (`run.py simulate` and the --dev "
                         "commands find it in var/dev.env)")
    values["PORT"] = str(port)  # so `simulate` and `--dev` commands reach this backend
    write_dev_env(values)
    emulator = start_emulator(args.stripe_port)
    installs = None
    try:
        sandbox_key = config_over_dev_env(values).secret_keys.get(Mode.SANDBOX)
        installs, installs_url = start_fake_installs(args.installs_port,
                                                     f"http://127.0.0.1:{args.stripe_port}",
                                                     sandbox_key)
        values["STRIPE_API_BASE"] = installs_url
        write_dev_env(values)  # so `--dev` commands and sourced shells reach this fake
        config = config_over_dev_env(values)
        print("development configuration (also in var/dev.env):")
        for line in shown_configuration(values, os.environ):
            print(line)
        print(f"manifest connect-src: {connect_src(config)}  (PUBLIC_URL; a browser needs a "
              "tunnel or https for it: docs/extension.md)")
        print(f"backend: http://{config.host}:{config.port}  try: .venv/bin/python run.py "
              "simulate install --account acct_demo --test (or --sandbox); other commands "
              "take --dev")
        return run_server(config)
    finally:
        for proc in (installs, emulator):
            if proc is not None:
                proc.terminate()
                proc.wait(5)
