"""The developer's app (issue 24): a package outside the project, named by `APP_PACKAGES`,
importing only `stripe_app_backend`, served by a real backend on loopback: its `@endpoint`s take
every check of the built-in signed endpoints (signature, CORS and the preflight, installed or
403, roles, declared fields, the one JSON error body), one that cannot suspend is served by the
lean path, the example app is not loaded (its endpoints answer 404), and an app that fails to
import stops `run.py` with one line naming the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    APP_SECRET,
    ROOT,
    SAMPLE_APP,
    base_env,
    compact,
    running,
    same_answer,
    sign,
)

from models.installation import apply_state

IDS = {"user_id": "usr_1", "account_id": "acct_1"}

NOTES = '''
"""A small app: a table, a job, an event handler, and four endpoints."""

from typing import Any

import peewee as pw

from stripe_app_backend import (
    AccountModel,
    APIError,
    BadInput,
    EndpointContext,
    EventContext,
    JobContext,
    SignedRequest,
    endpoint,
    job,
    on_event,
)


class Note(AccountModel):
    text = pw.TextField()


def count_notes(account_id: str, mode: str) -> int:
    return Note.select().where((Note.account_id == account_id) & (Note.mode == mode)).count()


@job(every=3600, permissions=["customer_read"])
async def hourly(ctx: JobContext) -> None:
    pass


@on_event("customer.created")
async def greet(ctx: EventContext) -> None:
    pass


@endpoint("/api/notes/hello", fields={"name": str, "times": int})
async def hello(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    """Say hello, from memory."""
    if req.body["times"] > 3:
        raise BadInput("times must be at most 3")
    if req.body["name"] == "teapot":
        raise APIError(418, "I am a teapot", code="teapot")
    return {"hello": req.body["name"] * req.body["times"], "modes": list(ctx.modes),
            "mode": ctx.mode, "user": ctx.user_id}


@endpoint("/api/notes/count", description="How many notes the account has")
async def count(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    return {"count": await ctx.db(count_notes, ctx.account_id, ctx.mode)}


@endpoint("/api/notes/admin", roles=["admin", "owner"])
async def admin(req: SignedRequest, ctx: EndpointContext) -> bool:
    return True


@endpoint("/api/notes/add", fields={"text": str}, single_use=True)
async def add(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    """Changes state: each signature once."""
    return {"added": req.body["text"]}
'''


@pytest.fixture(autouse=True)
def _forget_the_apps(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test's app leaves sys.modules and sys.path when the test ends."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("notes_app", "broken_app")]:
        del sys.modules[name]


def write_app(root: Path, name: str = "notes_app", body: str = NOTES) -> Path:
    app = root / "apps" / name
    app.mkdir(parents=True)
    (app / "__init__.py").write_text('"""The test\'s app."""\n')
    (app / "notes.py").write_text(textwrap.dedent(body))
    return app


async def install(app: Any, account: str = "acct_1", mode: str = "test") -> None:
    view, _ = await app.backend.storage.run(apply_state, account, mode, True,
                                            int(time.time()), "test")
    app.backend.installations.put(view)


@pytest.mark.gen_test(timeout=60)
async def test_an_app_endpoint_takes_every_check_and_answers_its_value(tmp_path):
    app_dir = write_app(tmp_path)
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        body = {**IDS, "name": "ab", "times": 2}
        resp = await app.signed("/api/notes/hello", body)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "not_installed"
        await install(app)
        resp = await app.signed("/api/notes/hello", body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.json() == {"hello": "abab", "modes": ["test"], "mode": "test",
                               "user": "usr_1"}
        preflight = await app.client.options("/api/notes/hello")
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        # a bad signature, then the declared fields: missing, wrong type, a bool is no int
        bad = await app.signed("/api/notes/hello", body,
                               header=sign(compact(body), "absec_wrong" + "x" * 24))
        assert bad.status_code == 401
        for wrong, message in (({"name": "a"}, "body needs the field 'times'"),
                               ({"name": 1, "times": 1}, "field 'name' must be a string"),
                               ({"name": "a", "times": True},
                                "field 'times' must be an integer")):
            resp = await app.signed("/api/notes/hello", {**IDS, **wrong})
            assert resp.status_code == 400, resp.text
            assert resp.json() == {"error": {"code": "bad_request", "message": message}}
        # BadInput and APIError from the function: the one error body
        resp = await app.signed("/api/notes/hello", {**body, "times": 4})
        assert resp.status_code == 400
        assert resp.json() == {"error": {"code": "bad_request",
                                         "message": "times must be at most 3"}}
        resp = await app.signed("/api/notes/hello", {**body, "name": "teapot"})
        assert resp.status_code == 418
        assert resp.json() == {"error": {"code": "teapot", "message": "I am a teapot"}}
        # roles: none of them -> 403 role_required; one of them -> served
        resp = await app.signed("/api/notes/admin", {**IDS, "stripe_roles": ["view_only"]})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "role_required"
        resp = await app.signed("/api/notes/admin", {**IDS, "stripe_roles": ["owner"]})
        assert resp.status_code == 200 and resp.json() is True
        # ctx.db runs in a database thread, on the app's own table (created here: the app's
        # migrations are another test's)
        note = sys.modules["notes_app.notes"].Note
        await app.backend.storage.run(note.create_table)
        resp = await app.signed("/api/notes/count", IDS)
        assert resp.status_code == 200 and resp.json() == {"count": 0}
        # the example app is not loaded: its endpoints answer 404
        for path in ("/api/balance", "/api/customers/summary"):
            resp = await app.signed(path, IDS)
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        # the app's job and handler are the scheduler's and the dispatcher's
        registry = app.backend.registry
        assert "hourly" in registry.jobs and "customer.created" in registry.handlers
        assert "balance_snapshot" not in registry.jobs


@pytest.mark.gen_test(timeout=60)
async def test_an_app_endpoint_that_cannot_suspend_is_served_by_the_lean_path(tmp_path):
    app_dir = write_app(tmp_path)
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        routes = app.backend.app.lean.routes
        assert routes["/api/notes/hello"].__name__ == "HelloHandler"
        assert routes["/api/notes/admin"].__name__ == "AdminHandler"
        assert "/api/notes/count" not in routes  # it awaits the database
        assert "/api/notes/add" not in routes  # single-use: it records its signature
        await install(app)
        lean_routes = app.backend.app.lean
        body = {**IDS, "name": "é", "times": 1}
        first = await app.signed("/api/notes/hello", body)
        app.backend.app.lean = None  # the full handler path, for comparison
        try:
            second = await app.signed("/api/notes/hello", body)
        finally:
            app.backend.app.lean = lean_routes
        assert first.status_code == 200 and first.json()["hello"] == "é"
        same_answer(first, second)
        value = app.backend.metrics.registry.get_sample_value(
            "http_requests_total", {"handler": "HelloHandler", "method": "POST", "code": "200"})
        assert value == 2.0


def run_py(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_an_app_that_fails_to_import_stops_run_py_with_one_line(tmp_path):
    app_dir = write_app(tmp_path, "broken_app", "import a_module_that_is_not_there\n")
    env = {**os.environ, **base_env(tmp_path)}
    env.pop("APP_PACKAGES", None)
    result = run_py("--app", str(app_dir), "manifest", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "cannot load the app (APP_PACKAGES or --app): cannot import broken_app.notes: "
        "ModuleNotFoundError: No module named 'a_module_that_is_not_there'; fix that module "
        "or the app setting (see docs/apps.md)"]
    assert "Traceback" not in result.stderr


def test_doctor_names_the_apps_failed_import(tmp_path):
    app_dir = write_app(tmp_path, "broken_app", "def broken(:\n    pass\n")
    env = {**os.environ, **base_env(tmp_path)}
    result = run_py("--app", str(app_dir), "doctor", "--no-probe", env=env)
    assert result.returncode == 1
    app_lines = [line for line in result.stdout.splitlines() if "APP_PACKAGES" in line]
    assert app_lines == ["✗ APP_PACKAGES: cannot import broken_app.notes: SyntaxError: invalid "
                         "syntax (notes.py, line 1) -> fix: fix that module of your app, or the "
                         "app setting"]


def test_manifest_lists_the_apps_permissions_and_events_and_app_wins_over_the_variable(
        tmp_path):
    app_dir = write_app(tmp_path)
    env = {**os.environ, **base_env(tmp_path, APP_PACKAGES=SAMPLE_APP)}
    result = run_py("manifest", "--app", str(app_dir), env=env)
    assert result.returncode == 0, result.stderr
    fragment = json.loads(result.stdout)
    permissions = {p["permission"] for p in fragment["permissions"]}
    assert "customer_read" in permissions and "balance_read" not in permissions
    assert "customer.created" in json.dumps(fragment)


def test_the_jobs_command_lists_the_apps_jobs(tmp_path):
    app_dir = write_app(tmp_path)
    env = {**os.environ, **base_env(tmp_path)}
    assert run_py("migrate", env=env).returncode == 0
    listed = run_py("--app", str(app_dir), "jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "# hourly:" in listed.stdout and "balance_snapshot" not in listed.stdout


def test_no_project_test_imports_or_loads_the_example_app(tmp_path):
    """The suite runs the sample app; editing the example app can never break a test."""
    tests = Path(ROOT, "tests")
    offenders = []
    for path in tests.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1 and (
                    words[1] == "example_app" or words[1].startswith("example_app.")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []
    # a backend started the tests' way (base_env) imports no module of the example app
    script = ("import asyncio, sys\n"
              "from service.config import Config\n"
              "from service.services import Services\n"
              "async def main():\n"
              "    s = await Services.open(Config.from_env(), until='app')\n"
              "    await s.stop(5)\n"
              "asyncio.run(main())\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'example_app'))\n")
    with_sample = {**os.environ, **base_env(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=with_sample, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.gen_test(timeout=60)
async def test_a_single_use_app_endpoint_accepts_each_signature_once(tmp_path):
    """`@endpoint(..., single_use=True)`, for an app endpoint that changes state: a replayed
    signature is refused as on the built-in state-changing endpoints; a fresh one is served."""
    app_dir = write_app(tmp_path)
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        await install(app)
        raw = compact({**IDS, "text": "hi"})
        header = sign(raw, APP_SECRET)
        first = await app.signed("/api/notes/add", raw, header=header)
        assert first.status_code == 200 and first.json() == {"added": "hi"}, first.text
        again = await app.signed("/api/notes/add", raw, header=header)
        assert again.status_code == 401, again.text
        assert again.json()["error"]["code"] == "signature_replayed"
        # the same body signed at another second is another signature
        other = await app.signed("/api/notes/add", raw,
                                 header=sign(raw, APP_SECRET, int(time.time()) - 1))
        assert other.status_code == 200, other.text


@pytest.mark.gen_test(timeout=60)
async def test_a_sandbox_install_is_one_of_the_modes_an_endpoint_sees(tmp_path):
    """`ctx.modes` in `MODES` order (live, test, sandbox); `ctx.mode` the first of them."""
    app_dir = write_app(tmp_path)
    async with running(base_env(tmp_path, APP_PACKAGES=str(app_dir))) as app:
        body = {**IDS, "name": "a", "times": 1}
        await install(app, mode="sandbox")
        resp = await app.signed("/api/notes/hello", body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["modes"] == ["sandbox"] and resp.json()["mode"] == "sandbox"
        await install(app, mode="test")
        resp = await app.signed("/api/notes/hello", body)
        assert resp.json()["modes"] == ["test", "sandbox"] and resp.json()["mode"] == "test"


@pytest.mark.gen_test(timeout=60)
async def test_the_example_endpoints_answer_every_mode(tmp_path):
    """The example's per-mode answers (the sample app's copy) have a key per mode, sandbox
    included: null where not installed or before the first snapshot or sync."""
    async with running(base_env(tmp_path, APP_PACKAGES=SAMPLE_APP, SCHEDULER="off")) as app:
        await install(app, mode="sandbox")
        for path in ("/api/balance", "/api/customers/summary"):
            resp = await app.signed(path, IDS)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"account_id": "acct_1", "live": None, "test": None,
                                   "sandbox": None}
