"""docs/apps.md's five minutes, as written: its `hello_app` (the Python block, put where the doc
says, in a folder outside the project) is served by a real backend through `APP_PACKAGES`, its
endpoint answers the signed request the doc shows with the answer the doc prints, its job is the
scheduler's with its permission, and every `run.py` line of the doc parses as a command."""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, base_env, running

from cli.main import _take_app_option, _take_dev_flag, build_parser
from models.installation import apply_state

DOC = Path(ROOT, "docs", "apps.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


@pytest.fixture
def hello_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sys, "path", list(sys.path))
    [source] = [b for b in blocks("python") if b.startswith("# hello_app/hello.py\n")]
    app = tmp_path / "myapps" / "hello_app"
    app.mkdir(parents=True)
    assert "echo '\"\"\"My Stripe App backend.\"\"\"' > ~/myapps/hello_app/__init__.py" in DOC
    (app / "__init__.py").write_text('"""My Stripe App backend."""\n')
    (app / "hello.py").write_text(source)
    yield app
    for name in [m for m in sys.modules if m.split(".")[0] == "hello_app"]:
        del sys.modules[name]


@pytest.mark.gen_test(timeout=60)
async def test_the_docs_app_is_served_as_the_doc_says(tmp_path, hello_app):
    async with running(base_env(tmp_path, APP_PACKAGES=str(hello_app))) as app:
        spec = app.backend.registry.jobs["count_customers"]
        assert spec.run_on_install and tuple(spec.permissions) == ("customer_read",)
        view, _ = await app.backend.storage.run(apply_state, "acct_demo", "test", True,
                                                int(time.time()), "test")
        app.backend.installations.put(view)
        # `simulate request /api/hello --account acct_demo --payload '{"name": "Ada"}'`
        resp = await app.signed("/api/hello", {"name": "Ada", "user_id": "usr_simulated",
                                               "account_id": "acct_demo"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"hello": "Ada", "account": "acct_demo", "mode": "test"}
        assert '`{"hello": "Ada", "account": "acct_demo", "mode": "test"}`' in DOC


def test_every_run_py_line_of_the_doc_is_a_command():
    lines = [line.split("#")[0].strip() for block in blocks("sh") for line in block.splitlines()]
    commands = [line for line in lines if ".venv/bin/python run.py" in line]
    assert len(commands) >= 5
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line.split("run.py", 1)[1])
        _, argv = _take_dev_flag(argv)
        _, argv = _take_app_option(argv)
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown command or option
        assert callable(args.func)
