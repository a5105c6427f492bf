"""The TypeScript client (clients/typescript, issue 25), run by Node's own test runner against
real backends: `npm test` builds it with tsc and runs `node --test`, whose tests start `python
run.py serve` (this interpreter, through `PYTHON`) and localstripe themselves
(clients/typescript/test/backend.ts). `npm run check` regenerates the types from
docs/openapi.yaml and fails when they differ from the checked-in ones.

Without `node_modules` (no `npm ci` in clients/typescript) these tests skip with the reason,
except in CI (the variable `CI` set), where they fail: CI must run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

CLIENT = os.path.join(ROOT, "clients", "typescript")


def _ready() -> str | None:
    """Why the client's tests cannot run here, or None."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return "node and npm are not installed"
    if not os.path.isdir(os.path.join(CLIENT, "node_modules")):
        return "clients/typescript/node_modules is missing: run `npm ci` in clients/typescript"
    return None


@pytest.fixture
def npm() -> str:
    reason = _ready()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the TypeScript client cannot be tested: {reason}")
        pytest.skip(reason)
    return shutil.which("npm") or "npm"


def _run(npm: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([npm, *args], cwd=CLIENT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def test_the_client_against_real_backends(npm):
    out = _run(npm, "test", timeout=600)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-4000:]
    assert "# fail 0" in out.stdout and "# pass 0" not in out.stdout, out.stdout[-4000:]


def test_the_checked_in_types_are_what_the_openapi_document_generates(npm):
    out = _run(npm, "run", "check", timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "is up to date with" in out.stdout
