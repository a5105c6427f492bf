"""The `localstripe` emulator, started with a state of its own (for tests and `run.py dev`).

localstripe keeps its whole store in one machine-wide file, `/tmp/localstripe.pickle`: it
unpickles that file at start-up (unless `--from-scratch`) and rewrites it on every change. Two
emulators at once (two test sessions, a dev server and a test run) overwrite each other's
customers and balances, every run starts from whatever an earlier one left, and a file planted
there is unpickled. So the emulator is never started through its own command here, but as

    python -m cli.emulator --port 0 [--state FILE]

which runs localstripe's own aiohttp application with the store pointed at FILE (created 0600,
loaded only if it exists) or, without `--state`, kept in memory only (from scratch, written
nowhere). It listens on 127.0.0.1 only, and prints the port it bound as its first line, so
`--port 0` lets the kernel choose a free port with no race between choosing and binding.

`start(port, state=None)` runs it as a child process and returns `(process, url)`; the child
exits when the process that started it does (`cli.devtools.start_child`).
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import subprocess

from cli.devtools import PARENT_FLAG, exit_with_parent, start_child


def _use_state_file(path: str | None) -> None:
    """Point localstripe's store at `path` (or at nothing) instead of the shared /tmp file."""
    from localstripe.resources import Store

    def load(self: Store) -> None:
        if path is None or not os.path.exists(path):
            return
        with open(path, "rb") as f:
            old = pickle.load(f)  # our own 0600 file, written by the dump below
        self.clear()
        self.update(old)

    def dump(self: Store) -> None:
        if path is None:
            return
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    Store.try_load_from_disk = load
    Store.dump_to_disk = dump


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.emulator")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--state", default=None,
                        help="keep the emulator's data in this file (default: memory only)")
    parser.add_argument(PARENT_FLAG, action="store_true",
                        help="exit when stdin closes (set by start(): die with the parent)")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        exit_with_parent()
    _use_state_file(args.state)
    from aiohttp import web
    from localstripe.resources import store
    from localstripe.server import app

    store.try_load_from_disk()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)


def start(port: int = 0, state: str | None = None,
          timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start the emulator as a child process; returns it and its base URL once it answers."""
    args = ["--port", str(port), *(["--state", state] if state is not None else [])]
    return start_child("cli.emulator", args, "the localstripe emulator (is localstripe "
                       "installed? pip install localstripe)", timeout)


if __name__ == "__main__":
    main()
