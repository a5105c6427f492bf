"""The operator's log-in (issue 23): a weak `OPERATOR_TOKEN` is refused at start-up, wrong tokens
are throttled per client and overall (429 with `Retry-After`, on an injected clock), and a
log-out ends the session on the server: the old cookie no longer reads anything, in any
process, since sessions live in the database."""

from __future__ import annotations

import httpx
import pytest
from conftest import base_env, running

from models.operator_sessions import OperatorSession
from service.config import Config, ConfigError, estimated_bits
from service.status import COOKIE
from service.throttle import OVERALL, OVERALL_EVERY, PER_CLIENT, PER_CLIENT_EVERY, LoginThrottle

TOKEN = "login-Rk5Wq9Tm2Xz7Lb4Hv1Nc8Gd3Pf6Js0Ya"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


# ---- the token's strength ---------------------------------------------------------------------

@pytest.mark.parametrize("weak", [
    "password12345678",                       # the probe's: short
    "operator-token-" + "x" * 20,             # long, but mostly one character
    "ab" * 20,                                # long, two characters
    "a" * 40 + "Z9",                          # long, but nearly one character
    "Correct-Horse-Battery",                  # short
])
def test_a_weak_operator_token_is_refused_at_start_up(weak):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OPERATOR_TOKEN": weak})
    message = str(caught.value)
    assert message.startswith("OPERATOR_TOKEN: too weak")
    assert "secrets.token_urlsafe(32)" in message and "32" in message
    assert weak not in message  # a secret is never echoed


def test_random_tokens_are_accepted():
    import secrets

    for token in (TOKEN, secrets.token_urlsafe(32), secrets.token_hex(32)):
        assert Config.from_env({"OPERATOR_TOKEN": token}).operator_token == token
    # the rule: 32+ characters and an estimated 128+ bits
    assert estimated_bits("password12345678") < 64
    assert estimated_bits("a" * 64) == 0
    assert estimated_bits("".join(chr(48 + i) for i in range(64))) == 64 * 6


# ---- throttling -------------------------------------------------------------------------------

def test_the_buckets_per_client_and_overall():
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(PER_CLIENT):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == PER_CLIENT_EVERY
    assert throttle.wait("10.0.0.2") == 0  # another client is not throttled by this one
    clock.now += PER_CLIENT_EVERY - 1
    assert throttle.wait("10.0.0.1") == 1
    clock.now += 1
    assert throttle.wait("10.0.0.1") == 0  # one more try, then wait again
    throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == PER_CLIENT_EVERY
    # overall: many clients, each within its own allowance, exhaust the process's
    clock.now += 3600
    clients = [f"10.1.{i // 250}.{i % 250}" for i in range(OVERALL)]
    for client in clients:
        assert throttle.wait(client) == 0
        throttle.failed(client)
    assert throttle.wait("10.2.0.1") == OVERALL_EVERY
    clock.now += OVERALL_EVERY
    assert throttle.wait("10.2.0.1") == 0
    # clients whose bucket filled up again are forgotten
    clock.now += 3600
    for i in range(100):
        throttle.failed(f"10.3.0.{i}")
        clock.now += PER_CLIENT * PER_CLIENT_EVERY
    assert throttle.clients < 70


def client_from(app, address: str, **kw) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any 127.x.y.z is this machine)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=app.url, transport=transport, timeout=20, **kw)


@pytest.mark.gen_test(timeout=60)
async def test_wrong_tokens_are_throttled_per_client_and_overall(tmp_path):
    async with running(base_env(tmp_path, OPERATOR_TOKEN=TOKEN)) as app:
        clock = Clock()
        app.backend.app.settings["login_throttle"] = throttle = LoginThrottle(clock)
        async with client_from(app, "127.0.0.2") as c:
            for i in range(PER_CLIENT):
                wrong = "wrong" if i % 2 else "Bearer wrong"
                resp = (await c.post("/status/login", data={"token": wrong}) if i % 2 else
                        await c.get("/status.json", headers={"Authorization": wrong}))
                assert resp.status_code == 401, i
            # now not even the right token is checked, on the form or as a bearer
            resp = await c.post("/status/login", data={"token": TOKEN})
            assert resp.status_code == 429
            assert resp.headers["retry-after"] == str(int(PER_CLIENT_EVERY))
            assert "try again in 12 seconds" in resp.text and COOKIE not in resp.headers.get(
                "set-cookie", "")
            resp = await c.get("/status.json", headers=BEARER)
            assert resp.status_code == 429 and resp.headers["retry-after"] == "12"
            assert resp.json()["error"]["code"] == "too_many_requests"
            # another client is not held up by this one
            async with client_from(app, "127.0.0.3") as other:
                assert (await other.get("/status.json", headers=BEARER)).status_code == 200
            # once the wait is over, the right token works again
            clock.now += PER_CLIENT_EVERY
            assert (await c.get("/status.json", headers=BEARER)).status_code == 200
            resp = await c.post("/status/login", data={"token": TOKEN})
            assert resp.status_code == 303
        # overall: many clients, each within its allowance, use up the process's
        clock.now += 3600
        spent = 0
        for n in range(OVERALL // PER_CLIENT + 1):
            async with client_from(app, f"127.0.1.{n + 1}") as c:
                while spent < OVERALL and throttle.wait(f"127.0.1.{n + 1}") == 0:
                    resp = await c.post("/status/login", data={"token": "wrong"})
                    assert resp.status_code == 401
                    spent += 1
        async with client_from(app, "127.0.2.1") as fresh:
            resp = await fresh.get("/status.json", headers=BEARER)
            assert resp.status_code == 429
            assert resp.headers["retry-after"] == str(int(OVERALL_EVERY))


# ---- sessions ---------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_log_out_ends_the_session_on_the_server(tmp_path):
    async with running(base_env(tmp_path, OPERATOR_TOKEN=TOKEN)) as app:
        async with httpx.AsyncClient(base_url=app.url) as browser:
            resp = await browser.post("/status/login", data={"token": TOKEN})
            assert resp.status_code == 303
            old = browser.cookies[COOKIE]
            page = (await browser.get("/status")).text
            csrf = page.split('name="_csrf" value="', 1)[1].split('"', 1)[0]
            resp = await browser.post("/status/logout", data={"_csrf": csrf})
            assert resp.status_code == 303
        # the cookie as it was before the log-out, replayed: refused
        async with httpx.AsyncClient(base_url=app.url, cookies={COOKIE: old}) as thief:
            assert (await thief.get("/status.json")).status_code == 401
            resp = await thief.get("/status")
            assert resp.status_code == 303 and resp.headers["location"] == "/status/login"
        assert await app.backend.storage.run(OperatorSession.select().count) == 0

        # a session ended by another process (its row deleted) is refused here at once
        async with httpx.AsyncClient(base_url=app.url) as browser:
            assert (await browser.post("/status/login", data={"token": TOKEN})).status_code == 303
            assert (await browser.get("/status.json")).status_code == 200
            (row,) = await app.backend.storage.run(lambda: list(OperatorSession.select()))
            assert row.id not in browser.cookies[COOKIE]  # the table holds a digest only
            await app.backend.storage.run(OperatorSession.delete().execute)
            assert (await browser.get("/status.json")).status_code == 401
