"""The SQLite database's files are this user's only (issue 23): under the usual umask 022, a new
database file and its `-wal` and `-shm` are created 0600, in a folder created 0700, whether the
server or a command opens it. They hold event payloads, task inputs and encrypted
credentials."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
from conftest import base_env, running

from models.db import open_database
from models.migrate import migrate


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_private(folder, name) -> None:
    assert mode(folder) == 0o700, oct(mode(folder))
    for suffix in ("", "-wal", "-shm"):
        path = os.path.join(folder, name + suffix)
        assert os.path.exists(path), path
        assert mode(path) == 0o600, (path, oct(mode(path)))


def test_a_new_database_is_private_under_umask_022(tmp_path):
    folder = tmp_path / "var"
    with umask(0o022):
        db = open_database(f"sqlite:///{folder}/app.db")
        try:
            migrate(db)  # writes: the -wal and -shm files exist while it is open
            assert_private(folder, "app.db")
        finally:
            db.close()
        # a file made before (by another tool, or an older version) keeps its mode
        other = tmp_path / "old.db"
        other.touch(mode=0o640)
        db = open_database(f"sqlite:///{other}")
        try:
            migrate(db)
            assert mode(other) == 0o640
        finally:
            db.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_servers_database_is_private_under_umask_022(tmp_path):
    folder = tmp_path / "data" / "var"
    with umask(0o022):
        async with running(base_env(tmp_path, DATABASE_URL=f"sqlite:///{folder}/dev.db")):
            assert_private(folder, "dev.db")
