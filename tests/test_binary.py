"""The one-file build (deploy/build-binary -> dist/stripe-app-backend), run as a user would: copied
into an empty folder, with no virtual environment, it migrates a new SQLite database there,
answers /healthz and verifies a signed request (issue 16).

The build takes minutes, longer than the rest of the suite, so this runs only with
BUILD_BINARY_TEST=1 (BUILD_BINARY_TEST=use-existing tests dist/stripe-app-backend as it is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
from conftest import APP_SECRET, ROOT, WH_LIVE, compact, event, free_port, sign

WANTED = os.environ.get("BUILD_BINARY_TEST", "")
pytestmark = pytest.mark.skipif(not WANTED, reason="set BUILD_BINARY_TEST=1 to build and test")

BINARY = os.path.join(ROOT, "dist", "stripe-app-backend")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    if WANTED != "use-existing":
        subprocess.run([os.path.join(ROOT, "deploy", "build-binary")], cwd=ROOT, check=True,
                       capture_output=True, timeout=1800)
    folder = tmp_path_factory.mktemp("target")
    target = folder / "stripe-app-backend"
    shutil.copy2(BINARY, target)
    return folder, str(target)


OPERATOR_TOKEN = "bin-Hq7Rw2Kx9Tz4Lm8Vb3Nc6Pd1Fs5Gj0Ya"  # random-looking: 32+ characters


def _env(**extra: str) -> dict[str, str]:
    # Nothing of this checkout's Python: no virtual environment, no PYTHONPATH.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def test_binary_migrates_serves_and_verifies(binary):
    folder, exe = binary
    out = subprocess.run([exe, "migrate"], cwd=folder, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "001_initial" in out.stdout and (folder / "var" / "app.db").exists()
    out = subprocess.run([exe, "migrate"], cwd=folder, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert "up to date" in out.stdout
    # the jobs package is discovered inside the bundle
    out = subprocess.run([exe, "manifest"], cwd=folder, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and '"balance_read"' in out.stdout, out.stderr

    port = free_port()
    server = subprocess.Popen([exe, "serve"], cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(PORT=str(port), STRIPE_APP_SECRETS=APP_SECRET,
                                       STRIPE_WEBHOOK_SECRETS_LIVE=WH_LIVE,
                                       OPERATOR_TOKEN=OPERATOR_TOKEN))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline and server.poll() is None, "did not start"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["database"]["ok"] is True
        body = compact({"user_id": "usr_bin", "account_id": "acct_bin"}).encode()

        def whoami() -> httpx.Response:
            return httpx.post(f"{url}/api/whoami", content=body, headers={
                "Stripe-Signature": sign(body, APP_SECRET), "Content-Type": "application/json"})

        resp = whoami()  # the signature verifies; the account has not installed the app yet
        assert resp.status_code == 403 and "not_installed" in resp.text
        # a signed webhook installs it (the event is processed after the 200)
        raw = json.dumps(event("account.application.authorized", "acct_bin"), indent=2)
        hook = httpx.post(f"{url}/webhooks", content=raw.encode(),
                          headers={"Stripe-Signature": sign(raw, WH_LIVE)})
        assert hook.status_code == 200, hook.text
        deadline = time.time() + 30
        while (resp := whoami()).status_code == 403 and time.time() < deadline:
            time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        assert resp.json()["account_id"] == "acct_bin"
        bad = httpx.post(f"{url}/api/whoami", content=body, headers={
            "Stripe-Signature": sign(body, "absec_wrong"), "Content-Type": "application/json"})
        assert bad.status_code == 401
        # the status page's templates travel in the bundle
        page = httpx.get(f"{url}/status", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert page.status_code == 200 and "acct_bin" in page.text, page.text[:500]
    finally:
        server.terminate()
        assert server.wait(30) == 0, server.stdout.read() if server.stdout else ""


APP = """
from typing import Any

from stripe_app_backend import EndpointContext, JobContext, SignedRequest, endpoint, job


@job(every=3600, permissions=["customer_read"])
async def hourly(ctx: JobContext) -> None:
    pass


@endpoint("/api/bin/hello", fields={"name": str})
async def hello(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    return {"hello": req.body["name"], "modes": list(ctx.modes)}
"""


def test_binary_runs_an_app_brought_with_app(binary, tmp_path):
    """Issue 24: `stripe-app-backend --app DIR` runs an app in a folder outside the bundle."""
    folder, exe = binary
    app = tmp_path / "bin_app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "work.py").write_text(APP)
    out = subprocess.run([exe, "--app", str(app), "manifest"], cwd=folder, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"customer_read"' in out.stdout and '"balance_read"' not in out.stdout
    port = free_port()
    server = subprocess.Popen([exe, "--app", str(app), "serve"], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(PORT=str(port), STRIPE_APP_SECRETS=APP_SECRET,
                                       STRIPE_WEBHOOK_SECRETS_LIVE=WH_LIVE))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline and server.poll() is None, "did not start"
                time.sleep(0.2)
        raw = json.dumps(event("account.application.authorized", "acct_bin2"), indent=2)
        hook = httpx.post(f"{url}/webhooks", content=raw.encode(),
                          headers={"Stripe-Signature": sign(raw, WH_LIVE)})
        assert hook.status_code == 200, hook.text
        body = compact({"user_id": "usr_bin", "account_id": "acct_bin2", "name": "x"}).encode()

        def hello() -> httpx.Response:
            return httpx.post(f"{url}/api/bin/hello", content=body, headers={
                "Stripe-Signature": sign(body, APP_SECRET), "Content-Type": "application/json"})

        deadline = time.time() + 30
        while (resp := hello()).status_code == 403 and time.time() < deadline:
            time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"hello": "x", "modes": ["live"]}
        # the example app is not loaded beside it
        balance = httpx.post(f"{url}/api/balance", content=body, headers={
            "Stripe-Signature": sign(body, APP_SECRET), "Content-Type": "application/json"})
        assert balance.status_code == 404
    finally:
        server.terminate()
        assert server.wait(30) == 0, server.stdout.read() if server.stdout else ""
