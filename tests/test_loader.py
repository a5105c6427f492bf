"""One discovery (issue 22, item 5): `models/loader.py` imports every module of a list of
packages once, and the registry (jobs, event handlers, tasks, endpoints), the OAuth providers
and the model list are all collected from those modules. The package here is a small app written
into tmp_path, never the project's own; the endpoint it declares is served by a real backend on
loopback (issue 22, item 6: a signed endpoint declared beside its job)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SAMPLE_PACKAGES, WH_TEST, base_env, event, running, wait_for

from jobs.endpoints import EndpointSpec, per_mode_endpoint
from jobs.oauth import OAuthProviders
from jobs.registry import Registry
from models.base import models_of
from models.loader import DEFAULT_PACKAGES, LoadError, load_modules
from service.app import API_ROUTES
from service.declared import declared_routes

APP = "shop_app"  # the test app's package name; its modules leave sys.modules after each test

WORK = '''
import threading

import peewee as pw

from jobs.endpoints import per_mode_endpoint
from jobs.oauth import OAuthProvider
from jobs.registry import job, on_event
from jobs.tasks import task
from models.base import AccountModel

ACME = OAuthProvider("acme_test", "https://auth.example/token", "ACME_ID", "ACME_SECRET")


class NoteBase(AccountModel):
    __abstract__ = True


class Note(NoteBase):
    text = pw.TextField()


@job(every=60)
async def tick(ctx):
    pass


@on_event("customer.created")
async def greet(ctx):
    pass


@task()
async def export(ctx):
    return {}


@per_mode_endpoint("/api/shop/hello")
def hello(account_id, mode):
    return {"mode": mode, "account": account_id,
            "in_a_thread": threading.current_thread() is not threading.main_thread()}
'''

DEEP = '''
from jobs.registry import job


@job(cron="0 3 * * *")
async def deep_job(ctx):
    pass
'''

REFUSE = 'raise RuntimeError("{} must not be imported")\n'


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def app_dir(tmp_path, monkeypatch):
    """The test app's package directory, `tmp_path/apps/shop_app` (its parent joins sys.path
    only for the test, and its modules are forgotten after it)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    package = write(tmp_path / "apps" / APP, {
        "__init__.py": "",
        "work.py": WORK,
        "more/__init__.py": "",
        "more/deep.py": DEEP,
        "migrations/__init__.py": REFUSE.format("migrations"),
        "migrations/001_initial.py": REFUSE.format("a migration"),
        "tests/__init__.py": REFUSE.format("tests"),
    })
    yield package
    for name in [n for n in sys.modules if n == APP or n.startswith(APP + ".")]:
        del sys.modules[name]


def test_the_loader_finds_what_a_package_declares_and_everything_derives_from_it(app_dir):
    modules = load_modules([str(app_dir)])
    assert [m.__name__ for m in modules] == [
        APP, f"{APP}.more", f"{APP}.more.deep", f"{APP}.work"]  # not migrations, not tests
    assert str(app_dir.parent) in sys.path  # a path's parent joins sys.path

    registry = Registry.from_modules(modules)
    work = sys.modules[f"{APP}.work"]
    assert set(registry.jobs) == {"tick", "deep_job"}
    assert registry.jobs["deep_job"].cron == "0 3 * * *"  # found in a subpackage
    assert set(registry.tasks) == {"export"}
    assert registry.handlers == {"customer.created": [work.greet]}
    assert registry.endpoints == {
        "/api/shop/hello": EndpointSpec("/api/shop/hello", work.hello, "HelloHandler")}
    assert set(OAuthProviders.from_modules(modules, env={}).providers) == {"acme_test"}
    # the concrete model only: not its abstract base, nor AccountModel imported into the module
    assert models_of(modules) == [work.Note]
    # nothing of the project's own packages
    assert "balance_snapshot" not in registry.jobs and "/api/balance" not in registry.endpoints


def test_a_package_by_name_gives_the_same_modules_once(app_dir, monkeypatch):
    by_path = load_modules([str(app_dir)])
    monkeypatch.syspath_prepend(str(app_dir.parent))
    # a module two entries reach comes once, where the first entry reached it
    assert load_modules([APP, f"{APP}.work"]) == by_path
    assert load_modules([f"{APP}.work"]) == (sys.modules[f"{APP}.work"],)  # a plain module
    assert load_modules(f"{APP}.work") == (sys.modules[f"{APP}.work"],)  # one name, not letters


def test_the_default_is_what_the_backend_walks_jobs_models_and_the_examples():
    # the project's test suite never loads the example app (issue 24): the default is checked by
    # its names, and what a walk yields is checked on the sample app that the tests run
    assert DEFAULT_PACKAGES == ("models", "jobs", "example_app")
    modules = load_modules(SAMPLE_PACKAGES)
    registry = Registry.from_modules(modules)
    assert {"balance_snapshot"} <= set(registry.jobs) and "sync_customers" in registry.tasks
    assert set(registry.endpoints) == {"/api/balance", "/api/customers/summary"}
    names = {m.__name__ for m in models_of(modules)}
    assert {"Installation", "JobRun", "Task", "BalanceSnapshot", "CustomerSummary"} <= names
    assert "models.migrations" not in {m.__name__ for m in modules}


@pytest.mark.parametrize("body, cause", [
    ("import a_module_that_does_not_exist\n", ModuleNotFoundError),
    ("def broken(:\n    pass\n", SyntaxError),
    ("from jobs.registry import job\n\n@job(cron='not a crontab')\nasync def f(ctx):\n"
     "    pass\n", ValueError),
], ids=["missing-dependency", "syntax-error", "decorator-refuses"])
def test_a_module_that_fails_to_import_is_named(app_dir, body, cause):
    write(app_dir, {"broken.py": body})
    with pytest.raises(LoadError) as caught:
        load_modules([str(app_dir)])
    assert caught.value.name == f"{APP}.broken"
    assert str(caught.value).startswith(f"cannot import {APP}.broken: {cause.__name__}")
    assert isinstance(caught.value.__cause__, cause)


def test_a_package_that_is_not_there_is_named(tmp_path):
    with pytest.raises(LoadError, match="cannot import no_such_app_here: ModuleNotFoundError"):
        load_modules(["no_such_app_here"])
    (tmp_path / "not_a_package").mkdir()
    with pytest.raises(LoadError, match="not_a_package: not a package directory"):
        load_modules([str(tmp_path / "not_a_package")])


def test_two_declarations_under_one_name_are_refused_naming_a_module(app_dir):
    write(app_dir, {"again.py": "from jobs.registry import job\n\n@job(every=5)\n"
                                "async def tick(ctx):\n    pass\n"})
    with pytest.raises(ValueError, match=r"two jobs are named 'tick' \(one in shop_app\.work\)"):
        Registry.from_modules(load_modules([str(app_dir)]))
    (app_dir / "again.py").unlink()
    write(app_dir, {"twice.py": "from jobs.endpoints import per_mode_endpoint\n\n"
                                "@per_mode_endpoint('/api/shop/hello')\n"
                                "def hi(account_id, mode):\n    return None\n"})
    with pytest.raises(ValueError, match="two endpoints answer '/api/shop/hello'"):
        Registry.from_modules(load_modules([str(app_dir)]))


def test_an_endpoint_declaration_is_checked_where_it_is_written():
    with pytest.raises(ValueError, match="must match"):
        per_mode_endpoint("/balance")
    with pytest.raises(ValueError, match="must match"):
        per_mode_endpoint("/api/(.*)")  # a literal path, not a pattern

    async def reads(account_id: str, mode: str) -> None:
        return None

    with pytest.raises(TypeError, match="must be a plain function"):
        per_mode_endpoint("/api/reads")(reads)


def test_an_endpoint_at_a_built_in_path_is_refused():
    def jobs(account_id: str, mode: str) -> None:
        return None

    registry = Registry(endpoints={"/api/jobs": EndpointSpec("/api/jobs", jobs, "JobsHandler")})
    with pytest.raises(ValueError, match="the endpoint /api/jobs of .* is a built-in endpoint"):
        declared_routes(registry, taken=API_ROUTES)
    tasks = Registry(endpoints={"/api/tasks/x": EndpointSpec("/api/tasks/x", jobs, "XHandler")})
    with pytest.raises(ValueError, match="built-in"):  # a task name's pattern answers it
        declared_routes(tasks, taken=API_ROUTES)


@pytest.mark.gen_test(timeout=60)
async def test_a_declared_endpoint_is_served_per_installed_mode(tmp_path, app_dir):
    registry = Registry.from_modules(load_modules([str(app_dir)]))
    registry.jobs.clear()  # the endpoint is what this test is about
    async with running(base_env(tmp_path), registry=registry) as app:
        who = {"user_id": "usr_1", "account_id": "acct_1"}
        resp = await app.signed("/api/shop/hello", who)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "not_installed"
        await app.webhook(event("account.application.authorized", "acct_1", livemode=False),
                          secret=WH_TEST)
        await wait_for(lambda: asyncio.sleep(0, app.backend.installations.is_active(
            "acct_1", "test")), 20, "acct_1 installed")
        resp = await app.signed("/api/shop/hello", who)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.json() == {"account_id": "acct_1", "live": None, "test": {
            "mode": "test", "account": "acct_1", "in_a_thread": True}, "sandbox": None}
        preflight = await app.client.options("/api/shop/hello")
        assert preflight.status_code == 204
        # the examples' endpoints are not this app's: not served
        assert (await app.signed("/api/balance", who)).status_code == 404
        metrics = (await app.client.get("/metrics")).text
        assert 'http_requests_total{code="200",handler="HelloHandler",method="POST"} 1.0' in metrics
