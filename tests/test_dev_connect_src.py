"""`run.py dev` prints the URL to put in the manifest's `connect-src` (issue 25): the
extension's calls go to `PUBLIC_URL/api/`, so a tunnel's public URL shows up there once
`PUBLIC_URL` names it (docs/extension.md, "Local development with a browser")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import free_port
from test_e2e import RUN, clean_env


def dev_output(cwd, **env: str) -> str:
    """What `run.py dev` prints up to its `backend:` line (then it is stopped), in `cwd` (a
    folder of its own: dev keeps its secrets in `var/`), with the port shown as PORT."""
    cwd.mkdir()
    port, stripe_port = free_port(), free_port()
    environ = {k: v for k, v in clean_env(PORT=str(port), **env).items()
               if k != "PUBLIC_URL" or "PUBLIC_URL" in env}
    dev = subprocess.Popen(
        [sys.executable, "-u", RUN, "dev", "--stripe-port", str(stripe_port)], cwd=cwd,
        env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    assert dev.stdout is not None
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            lines.append(line)
            if line.startswith("backend:") or not line:
                break
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=30)
    return "".join(lines).replace(str(port), "PORT")


def test_dev_prints_the_connect_src_of_its_public_url(tmp_path):
    local = dev_output(tmp_path / "local")
    assert "manifest connect-src: http://127.0.0.1:PORT/api/  (PUBLIC_URL;" in local, local
    tunnel = "https://example-tunnel.trycloudflare.com"
    shown = dev_output(tmp_path / "tunnel", PUBLIC_URL=tunnel)
    assert f"manifest connect-src: {tunnel}/api/  (PUBLIC_URL;" in shown, shown
