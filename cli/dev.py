"""`run.py dev`: the backend with development secrets and the localstripe emulator as Stripe.

Secrets are generated once and kept in `var/dev.env` (so `run.py simulate` in another shell
signs with the same ones, and a restart keeps them); variables already set in the environment
win. The emulator is started on `--stripe-port` unless something already answers there; it keeps
its data in `var/dev-localstripe.pickle` (its own file, see `cli/emulator.py`). Never use this
mode with real Stripe keys.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess

from cli import emulator
from cli.simulate import DEV_ENV, load_dev_env
from service.config import Config


def _generate() -> dict[str, str]:
    return {
        "STRIPE_APP_SECRETS": "absec_dev" + secrets.token_hex(16),
        "STRIPE_WEBHOOK_SECRETS_LIVE": "whsec_devlive" + secrets.token_hex(16),
        "STRIPE_WEBHOOK_SECRETS_TEST": "whsec_devtest" + secrets.token_hex(16),
        "STRIPE_SECRET_KEY_LIVE": "sk_live_dev" + secrets.token_hex(8),
        "STRIPE_SECRET_KEY_TEST": "sk_test_dev" + secrets.token_hex(8),
        "STRIPE_APP_ID": "com.example.devapp",
        "CREDENTIALS_KEYS": _fernet_key(),
    }


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


def start_emulator(port: int) -> subprocess.Popen | None:
    if _port_open(port):
        print(f"localstripe: already answering on port {port}")
        return None
    try:
        proc, url = emulator.start(port, state=os.path.abspath(EMULATOR_STATE))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    print(f"localstripe: started at {url} (pid {proc.pid}, data in {EMULATOR_STATE})")
    return proc


def run_dev(args: argparse.Namespace) -> int:
    os.makedirs(os.path.dirname(DEV_ENV), exist_ok=True)
    values = load_dev_env()
    if not values:
        values = _generate()
        with open(DEV_ENV, "w") as f:
            f.write("# development secrets written by `run.py dev`; never use in production\n")
            f.writelines(f"{k}={v}\n" for k, v in values.items())
    if "CREDENTIALS_KEYS" not in values:  # a dev.env from before the credentials vault
        values["CREDENTIALS_KEYS"] = _fernet_key()
        with open(DEV_ENV, "a") as f:
            f.write(f"CREDENTIALS_KEYS={values['CREDENTIALS_KEYS']}\n")
    values["STRIPE_API_BASE"] = f"http://127.0.0.1:{args.stripe_port}"
    env = {**values, **os.environ}
    config = Config.from_env(env)
    emulator = start_emulator(args.stripe_port)
    print("development configuration (also in var/dev.env):")
    for key in sorted(values):
        print(f"  {key}={env[key]}")
    print(f"backend: http://{config.host}:{config.port}  try: python run.py simulate install "
          "--account acct_demo --test")
    from cli.main import run_server

    try:
        return run_server(config)
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(5)
