"""The localstripe launcher (cli/emulator.py): each emulator has its own data, never the
machine-wide /tmp/localstripe.pickle that localstripe itself loads and rewrites (issue 11)."""

from __future__ import annotations

import os
import stat

import httpx

from cli import emulator


def test_the_store_writes_only_to_its_own_file(tmp_path, monkeypatch):
    from localstripe.resources import Store

    monkeypatch.setattr(Store, "dump_to_disk", Store.dump_to_disk)
    monkeypatch.setattr(Store, "try_load_from_disk", Store.try_load_from_disk)
    emulator._use_state_file(None)
    store = Store()
    store["customer:cus_1"] = {"id": "cus_1"}  # written nowhere
    assert os.listdir(tmp_path) == []
    path = str(tmp_path / "own.pickle")
    emulator._use_state_file(path)
    store["customer:cus_2"] = {"id": "cus_2"}
    assert os.listdir(tmp_path) == ["own.pickle"]
    again = Store()
    again.try_load_from_disk()
    assert set(again) == {"customer:cus_1", "customer:cus_2"}


def _customers(url: str) -> list[str]:
    answer = httpx.get(url + "/v1/customers", auth=("sk_test_x", ""), timeout=10).json()
    return [c["email"] for c in answer["data"]]


def test_state_is_private_and_kept_only_where_asked(tmp_path):
    state = str(tmp_path / "stripe.pickle")
    proc, url = emulator.start(0, state=state)
    try:
        httpx.post(url + "/v1/customers", data={"email": "kept@example.com"},
                   auth=("sk_test_x", ""), timeout=10).raise_for_status()
        assert _customers(url) == ["kept@example.com"]
    finally:
        proc.terminate()
        proc.wait(5)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    # a second emulator without a state file starts empty (localstripe on its own would load
    # the customer above back from the shared file)
    proc, url = emulator.start(0)
    try:
        assert _customers(url) == []
        httpx.post(url + "/v1/customers", data={"email": "gone@example.com"},
                   auth=("sk_test_x", ""), timeout=10).raise_for_status()
    finally:
        proc.terminate()
        proc.wait(5)
    # the state file brings its data back, and only its own
    proc, url = emulator.start(0, state=state)
    try:
        assert _customers(url) == ["kept@example.com"]
    finally:
        proc.terminate()
        proc.wait(5)
