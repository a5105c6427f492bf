"""`/healthz` tells a database that answers but refuses writes (issue 13, section 4), learned
from real writes, never by writing per check. Real SQLite files: one made read-only (chattr +i
as root, where chmod would not stop writes; chmod otherwise), one made full with SQLite's
`max_page_count`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator

import pytest
from conftest import base_env, event, running

BIG = "x" * 200_000  # a payload that needs new pages


@contextlib.contextmanager
def read_only(path: str) -> Iterator[None]:
    """The file at `path` refuses to be opened for writing, root or not; undone on exit."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i is not available here")
        undo = ["chattr", "-i", path]
    else:
        mode = os.stat(path).st_mode
        os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with pytest.raises(PermissionError):
            os.close(os.open(path, os.O_WRONLY))
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(undo, check=True)
        else:
            os.chmod(path, mode)


async def health(app) -> tuple[int, dict]:
    resp = await app.client.get("/healthz")
    return resp.status_code, resp.json()


@pytest.mark.gen_test(timeout=60)
async def test_a_full_database_is_reported_and_its_recovery_seen(tmp_path):
    async with running(base_env(tmp_path, DB_WORKERS="1")) as app:
        storage, db = app.backend.storage, app.backend.storage.db
        status, body = await health(app)
        assert status == 200 and body["database"]["writable"] is True
        # health checks write nothing: another connection sees no commit
        watcher = sqlite3.connect(tmp_path / "app.db")
        version = watcher.execute("PRAGMA data_version").fetchone()
        for _ in range(20):
            assert (await health(app))[0] == 200
        assert watcher.execute("PRAGMA data_version").fetchone() == version

        pages = await storage.run(lambda: db.execute_sql("PRAGMA page_count").fetchone()[0])
        await storage.run(db.pragma, "max_page_count", pages, permanent=True)
        resp = await app.webhook(event("customer.created", obj={"id": "cus_1", "description": BIG}))
        assert resp.status_code == 503
        status, body = await health(app)
        assert status == 503 and body["status"] == "degraded"
        assert body["database"]["ok"] is True and body["database"]["writable"] is False
        assert "full" in body["database"]["write_error"]
        assert watcher.execute("PRAGMA data_version").fetchone() == version

        # room again: the next real write is seen, no probe needed
        await storage.run(db.pragma, "max_page_count", 1 << 30, permanent=True)
        resp = await app.webhook(event("customer.created", obj={"id": "cus_1", "description": BIG}))
        assert resp.status_code == 200
        status, body = await health(app)
        assert status == 200 and body["status"] == "ok" and body["database"]["writable"]
        watcher.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_read_only_database_file_is_reported_and_probed_back(tmp_path):
    async with running(base_env(tmp_path, DB_WORKERS="1")) as app:
        storage = app.backend.storage
        with read_only(str(tmp_path / "app.db")):
            await storage.run(storage.db.close)  # the next call opens the file afresh
            resp = await app.webhook(event("customer.created"))
            assert resp.status_code == 503
            status, body = await health(app)
            assert status == 503 and body["status"] == "degraded"
            assert "readonly" in body["database"]["write_error"]
            storage.writes.probe_interval = 0  # probe on every check from now on
            status, body = await health(app)  # the probe fails too
            assert status == 503 and body["database"]["writable"] is False
        # writable again, and nothing else writes: the occasional probe sees it
        status, body = await health(app)
        assert status == 200 and body["database"]["writable"] is True
        resp = await app.webhook(event("customer.created"))
        assert resp.status_code == 200
