"""`EVENT_LOOP` (`service/loops.py`): the loop a server process runs on, and a real server on
each of them answering a signed request and a webhook."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from conftest import APP_SECRET, ROOT, WH_LIVE, base_env, compact, event, free_port, sign

from service.config import Config, ConfigError
from service.loops import EVENT_LOOPS, loop_factory, resolve


def test_auto_takes_uvloop_when_it_is_installed_and_each_choice_makes_its_loop():
    assert resolve("auto") == "uvloop"  # a dependency of the package
    assert (resolve("uvloop"), resolve("asyncio")) == ("uvloop", "asyncio")
    for choice, module in (("uvloop", "uvloop"), ("asyncio", "asyncio")):
        loop = loop_factory(choice)()
        try:
            assert type(loop).__module__.split(".")[0] == module
        finally:
            loop.close()


def test_event_loop_setting_refuses_anything_else():
    assert Config.from_env({"EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    assert Config.from_env({}).event_loop == "auto"
    with pytest.raises(ConfigError, match="EVENT_LOOP: must be one of auto, uvloop, asyncio"):
        Config.from_env({"EVENT_LOOP": "tokio"})
    assert EVENT_LOOPS == ("auto", "uvloop", "asyncio")


def test_without_uvloop_auto_runs_on_asyncio_and_asking_for_uvloop_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert resolve("auto") == "asyncio"
    loop = loop_factory("auto")()
    try:
        assert type(loop).__module__.split(".")[0] == "asyncio"
    finally:
        loop.close()
    assert Config.from_env({"EVENT_LOOP": "auto"}).event_loop == "auto"
    with pytest.raises(ConfigError, match="EVENT_LOOP: uvloop is not installed"):
        Config.from_env({"EVENT_LOOP": "uvloop"})


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_server_on_each_loop_answers_signed_requests_and_webhooks(tmp_path, choice):
    port = free_port()
    env = {**os.environ, **base_env(tmp_path, PORT=str(port), EVENT_LOOP=choice,
                                    SCHEDULER="off", INSTALL_SYNC="off", LOG_LEVEL="info")}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        async def exercise() -> tuple[int, dict, int]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         timeout=10) as client:
                for _ in range(300):
                    if proc.poll() is not None:
                        raise AssertionError(log_path.read_text()[-2000:])
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                body = compact({"user_id": "usr_1", "account_id": "acct_1"})
                signed = await client.post("/api/installation", content=body, headers={
                    "Stripe-Signature": sign(body.encode(), APP_SECRET)})
                raw = json.dumps(event("invoice.paid", event_id="evt_loop1"), indent=2)
                hook = await client.post("/webhooks", content=raw, headers={
                    "Stripe-Signature": sign(raw.encode(), WH_LIVE)})
                return signed.status_code, hook.json(), hook.status_code

        status, hook, hook_status = asyncio.run(exercise())
        assert status == 200
        assert (hook_status, hook) == (200, {"received": True, "duplicate": False})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log_path.read_text()
    assert f"(event loop: {choice})" in text, text[-2000:]
