"""Playing Stripe's part, for `run.py simulate`, the tests and the benchmarks (one copy of each).

- `sign(payload, secret)`: a `Stripe-Signature` header, made by the stripe library;
- `make_event(type, account, livemode)`: a webhook event shaped as Stripe sends it;
- `compact(value)`: JSON without spaces, as the UI extension's signed requests send it;
- `free_port()`: a free TCP port on the loopback interface;
- `start_child(...)` / `exit_with_parent()`: a loopback server of ours as a child process that
  exits when its parent does, however the parent ends (even by SIGKILL).
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
    `created`, about `obj` (by default the app itself)."""
    return {
        "id": event_id or new_event_id(), "object": "event", "api_version": "2024-06-20",
        "account": account, "created": created or int(time.time()), "livemode": livemode,
        "data": {"object": obj or {"id": "ca_simulated", "object": "application"}},
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "type": type_,
    }


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
