"""Install links: redirect, state, callback, pages (issue 4). A real cookie jar (httpx) plays the
browser; install signatures are made by the `stripe` library over Stripe's signed string."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import (
    APP_SECRET,
    APP_SECRET_2,
    SAMPLE_PACKAGES,
    WH_TEST,
    base_env,
    compact,
    event,
    running,
    sign,
)

from models.base import discover_models
from models.install_state import InstallState
from models.installation import Installation
from service.install import COOKIE
from service.state_token import STATE_TTL, StateTokens

AUTH, DEAUTH = "account.application.authorized", "account.application.deauthorized"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def install_signature(state: str, user: str, account: str, secret: str = APP_SECRET,
                      ts: int | None = None) -> str:
    signed = compact({"state": state, "user_id": user, "account_id": account})
    return sign(signed, secret, ts)


async def start(client: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    resp = await client.get("/install")
    assert resp.status_code == 302
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    return query["state"][0], resp


def callback_params(state: str, user: str = "usr_1", account: str = "acct_1",
                    secret: str = APP_SECRET, **extra: str) -> dict[str, str]:
    return {"state": state, "user_id": user, "account_id": account,
            "install_signature": install_signature(state, user, account, secret), **extra}


@pytest.mark.gen_test(timeout=30)
async def test_install_link_redirect_and_cookie(tmp_path):
    async with running(base_env(tmp_path)) as app:
        state, resp = await start(app.client)
        location = urlsplit(resp.headers["location"])
        assert (location.scheme, location.netloc) == ("https", "marketplace.stripe.com")
        assert location.path == "/apps/install/link/com.example.testapp"
        query = parse_qs(location.query)
        assert query["redirect_uri"] == ["http://127.0.0.1:0/callback/stripe"]
        assert len(state) >= 40
        cookie = resp.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        state2, _ = await start(app.client)
        assert state2 != state  # fresh each time


@pytest.mark.gen_test(timeout=30)
async def test_secure_cookie_when_the_callback_is_https(tmp_path):
    env = base_env(tmp_path, STRIPE_INSTALL_REDIRECT_URI="https://app.example.com/cb/stripe")
    async with running(env) as app:
        _, resp = await start(app.client)
        assert "secure" in resp.headers["set-cookie"].lower()
        assert "redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%2Fstripe" in \
            resp.headers["location"]
        # the callback path follows the configured URI
        assert (await app.client.get("/cb/stripe")).status_code == 400
        assert (await app.client.get("/callback/stripe")).status_code == 404


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("livemode,mode", [(None, "live"), ("false", "test")])
async def test_whole_flow_records_the_installation(tmp_path, livemode, mode):
    async with running(base_env(tmp_path)) as app:
        state, _ = await start(app.client)
        params = callback_params(state)
        if livemode:
            params["livemode"] = livemode
        resp = await app.client.get("/callback/stripe", params=params, headers=BROWSER)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        assert "installed" in resp.text and "acct_1" in resp.text
        installs = await app.backend.storage.run(lambda: list(Installation.select()))
        assert [(i.account_id, i.mode, i.active, i.installed_by) for i in installs] == [
            ("acct_1", mode, True, "usr_1")]
        assert app.backend.installations.is_active("acct_1", mode)
        used = await app.backend.storage.run(lambda: list(InstallState.select()))
        assert [(u.account_id, u.used_at is not None) for u in used] == [("acct_1", True)]
        # the state is single-use
        again = await app.client.get("/callback/stripe", params=params,
                                     headers={"Accept": "application/json"})
        assert again.status_code == 403
        assert again.json()["error"]["code"] == "bad_state"


@pytest.mark.gen_test(timeout=30)
async def test_success_redirect_is_configured_not_taken_from_the_request(tmp_path):
    env = base_env(tmp_path, INSTALL_SUCCESS_URL="https://example.com/thanks")
    async with running(env) as app:
        state, _ = await start(app.client)
        params = callback_params(state, redirect_uri="https://evil.example/x",
                                 next="https://evil.example", return_to="//evil.example")
        resp = await app.client.get("/callback/stripe", params=params)
        assert resp.status_code == 302
        assert resp.headers["location"] == "https://example.com/thanks"
        # /install ignores any target in its query too
        resp = await app.client.get("/install", params={"redirect_uri": "https://evil.example",
                                                        "next": "https://evil.example"})
        location = urlsplit(resp.headers["location"])
        assert location.netloc == "marketplace.stripe.com"
        assert "evil" not in resp.headers["location"]


@pytest.mark.gen_test(timeout=30)
async def test_failures(tmp_path):
    async with running(base_env(tmp_path)) as app:
        c = app.client
        json_hdr = {"Accept": "application/json"}

        async def check(params, status, code=None, client=c):
            resp = await client.get("/callback/stripe", params=params, headers=json_hdr)
            assert resp.status_code == status, (params, resp.text)
            if code:
                assert resp.json()["error"]["code"] == code
            return resp

        state, _ = await start(c)
        # forged signature / over a different state / rotated-out secret
        await check({**callback_params(state), "install_signature": "t=1,v1=" + "0" * 64},
                    401, "bad_signature")
        other = callback_params("x" * 43)
        await check({**callback_params(state), "install_signature": other["install_signature"]},
                    401, "bad_signature")
        await check(callback_params(state, secret=APP_SECRET_2), 401, "bad_signature")
        old = install_signature(state, "usr_1", "acct_1", ts=int(time.time()) - 3600)
        await check({**callback_params(state), "install_signature": old}, 401)
        # unknown state (validly signed)
        await check(callback_params("u" * 43), 403, "bad_state")
        # missing, duplicated and malformed parameters
        for drop in ("user_id", "account_id", "install_signature"):
            params = callback_params(state)
            del params[drop]
            await check(params, 400, "bad_request")
        # without state it is a Marketplace install, whose signature must not cover a state
        params = callback_params(state)
        del params["state"]
        await check(params, 401, "bad_signature")
        dup = list(callback_params(state).items()) + [("account_id", "acct_2")]
        resp = await c.get("/callback/stripe", params=dup, headers=json_hdr)
        assert resp.status_code == 400 and "more than once" in resp.json()["error"]["message"]
        await check(callback_params(state, account="cus_1"), 400)
        await check(callback_params(state, livemode="maybe"), 400)
        # state from another browser: a fresh cookie jar, and no cookie at all
        async with httpx.AsyncClient(base_url=app.url) as other_browser:
            await check(callback_params(state), 403, "bad_state", client=other_browser)
            await other_browser.get("/install")  # has its own cookie now, still not this state
            await check(callback_params(state), 403, "bad_state", client=other_browser)
        # none of that used up the state: the rightful browser still completes
        await check(callback_params(state), 200)
        assert app.backend.installations.is_active("acct_1", "live")


@pytest.mark.gen_test(timeout=30)
async def test_expired_state(tmp_path):
    async with running(base_env(tmp_path)) as app:
        _, resp = await start(app.client)  # the browser's cookie
        cookie = app.client.cookies[COOKIE]
        state = StateTokens([APP_SECRET]).issue(cookie, now=time.time() - STATE_TTL - 1)
        resp = await app.client.get("/callback/stripe", params=callback_params(state),
                                    headers=BROWSER)
        assert resp.status_code == 403
        assert "expired" in resp.text or "start the installation again" in resp.text


@pytest.mark.gen_test(timeout=30)
async def test_user_cancelled(tmp_path):
    async with running(base_env(tmp_path)) as app:
        state, _ = await start(app.client)
        resp = await app.client.get("/callback/stripe", params={
            "error": "access_denied", "error_description": "The user denied <b>access</b>",
            "state": state}, headers=BROWSER)
        assert resp.status_code == 400
        assert "cancelled" in resp.text
        assert "<b>" not in resp.text and "&lt;b&gt;" in resp.text  # escaped
        assert await app.backend.storage.run(lambda: Installation.select().count()) == 0
        # nothing recorded: the state is still usable until it expires
        assert await app.backend.storage.run(lambda: InstallState.select().count()) == 0
        assert (await app.client.get("/callback/stripe",
                                     params=callback_params(state))).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_not_configured(tmp_path):
    async with running(base_env(tmp_path, STRIPE_APP_ID="")) as app:
        resp = await app.client.get("/install")
        assert resp.status_code == 503
        assert "installing is not configured" in resp.json()["error"]["message"]


@pytest.mark.gen_test(timeout=30)
async def test_install_uninstall_reinstall_one_record_per_mode(tmp_path):
    async with running(base_env(tmp_path)) as app:
        state, _ = await start(app.client)
        assert (await app.client.get("/callback/stripe",
                                     params=callback_params(state))).status_code == 200
        await app.webhook(event(DEAUTH, "acct_1", created=int(time.time()) + 1))
        await app.settle()
        assert not app.backend.installations.is_active("acct_1")
        time.sleep(1.1)  # the reinstall happens in a later second than the uninstall
        state, _ = await start(app.client)
        assert (await app.client.get("/callback/stripe",
                                     params=callback_params(state))).status_code == 200
        installs = await app.backend.storage.run(lambda: list(Installation.select()))
        assert len(installs) == 1
        assert installs[0].active and installs[0].uninstalled_at is not None


def marketplace_params(user: str, account: str, ts: int | None = None,
                       **extra: str) -> dict[str, str]:
    signed = compact({"user_id": user, "account_id": account})
    return {"user_id": user, "account_id": account,
            "install_signature": sign(signed, APP_SECRET, ts), **extra}


@pytest.mark.gen_test(timeout=30)
async def test_marketplace_install_without_state(tmp_path):
    """Issue 14, then issue 23: the callback without `state` verifies the signature over
    {"user_id","account_id"}, but installs nothing until Stripe confirms it (here the
    `authorized` event: no Install API is configured); the page says it is pending, and the
    signature is accepted once."""
    async with running(base_env(tmp_path)) as app:
        params = marketplace_params("usr_m", "acct_market", livemode="false")
        resp = await app.client.get("/callback/stripe", params=params, headers=BROWSER)
        assert resp.status_code == 202 and "Installation pending" in resp.text
        assert "The app is installed" not in resp.text
        rows = await app.backend.storage.run(lambda: [
            (r.account_id, r.mode, r.active, r.installed_by, r.pending_at is not None)
            for r in Installation.select()])
        assert rows == [("acct_market", "test", False, "usr_m", True)]
        assert not app.backend.installations.is_active("acct_market")
        assert app.backend.installations.get("acct_market", "test").pending
        seen = (await app.signed("/api/installation", {"user_id": "usr_m",
                                                       "account_id": "acct_market"})).json()
        assert seen["test"]["pending"] is True and seen["test"]["active"] is False
        # the same signature again: refused
        again = await app.client.get("/callback/stripe", params=params,
                                     headers={"Accept": "application/json"})
        assert again.status_code == 403 and again.json()["error"]["code"] == "signature_used"
        # Stripe confirms: now it is installed, by the user who asked
        await app.webhook(event(AUTH, "acct_market", livemode=False), secret=WH_TEST)
        await app.settle()
        assert app.backend.installations.is_active("acct_market", "test")
        view = app.backend.installations.get("acct_market", "test")
        assert view.confirmed and not view.pending and view.installed_by == "usr_m"
        # a wrong signature: 401 and nothing recorded
        signed = compact({"user_id": "usr_m", "account_id": "acct_market"})
        for bad in (sign(signed, APP_SECRET_2),
                    sign(compact({"account_id": "acct_other", "user_id": "usr_m"}), APP_SECRET),
                    install_signature("s" * 43, "usr_m", "acct_other")):
            resp = await app.client.get("/callback/stripe", params={
                "user_id": "usr_m", "account_id": "acct_other", "install_signature": bad},
                headers={"Accept": "application/json"})
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "bad_signature"
        count = await app.backend.storage.run(Installation.select().count)
        assert count == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_replayed_install_signature_neither_installs_nor_reinstalls(tmp_path):
    """Issue 23: any user of an account can make a Marketplace install signature (it is what
    the extension's `fetchStripeSignature()` signs with no payload). Replayed 50 times, and 2 s
    after a signed deauthorization, it set the install active again and restarted its jobs.
    Now: each signature is accepted once, and nothing signed before an uninstall undoes it."""
    t0 = int(time.time())
    json_hdr = {"Accept": "application/json"}
    async with running(base_env(tmp_path)) as app:
        await app.webhook(event(AUTH, "acct_r", created=t0 - 30))
        await app.settle()
        assert app.backend.installations.is_active("acct_r", "live")
        params = marketplace_params("usr_1", "acct_r", ts=t0 - 10)
        first = await app.client.get("/callback/stripe", params=params, headers=json_hdr)
        assert first.status_code == 200 and first.json()["installed"] is True  # it was
        # uninstalled: a signed deauthorization, after the signature was made
        await app.webhook(event(DEAUTH, "acct_r", created=t0 - 5))
        await app.settle()
        assert not app.backend.installations.is_active("acct_r")
        for _ in range(50):
            replay = await app.client.get("/callback/stripe", params=params, headers=json_hdr)
            assert replay.status_code == 403
            assert replay.json()["error"]["code"] == "signature_used"
        # a signature never used, but made before the uninstall: it does not undo it
        fresh = await app.client.get("/callback/stripe", headers=json_hdr,
                                     params=marketplace_params("usr_2", "acct_r", ts=t0 - 8))
        assert fresh.status_code == 409 and fresh.json()["error"]["code"] == "not_installed"
        # nor does an install link signed before it (its state fresh and unused)
        state, _ = await start(app.client)
        link = {**callback_params(state, account="acct_r"),
                "install_signature": install_signature(state, "usr_1", "acct_r", ts=t0 - 8)}
        resp = await app.client.get("/callback/stripe", params=link, headers=json_hdr)
        assert resp.status_code == 409
        assert not app.backend.installations.is_active("acct_r")
        assert app.backend.scheduler.next_run("balance_snapshot", "acct_r", "live") is None
        row = await app.backend.storage.run(Installation.get, Installation.account_id == "acct_r")
        assert not row.active and row.state_source != "callback" and row.pending_at is None


@pytest.mark.gen_test(timeout=30)
async def test_an_install_links_mode_is_provisional_until_stripe_agrees(tmp_path):
    """Issue 23: with `state` the install takes effect at once, but its mode (`livemode`, which
    Stripe does not sign) is provisional until the event or the Install API agrees; without
    `livemode`, live is assumed, and the answer says so."""
    async with running(base_env(tmp_path)) as app:
        state, _ = await start(app.client)
        resp = await app.client.get("/callback/stripe", params=callback_params(state),
                                    headers={"Accept": "application/json"})
        assert resp.status_code == 200
        assert resp.json() == {"installed": True, "account_id": "acct_1", "mode": "live",
                               "confirmed": False, "pending": False, "mode_assumed": True}
        assert app.backend.installations.is_active("acct_1", "live")
        assert app.backend.installations.get("acct_1", "live").provisional
        state, _ = await start(app.client)
        page = await app.client.get("/callback/stripe", headers=BROWSER, params=callback_params(
            state, account="acct_2", livemode="false"))
        assert page.status_code == 200 and "has not confirmed the mode yet" in page.text
        assert "assumed" not in page.text  # the link said which mode
        # Stripe agrees: confirmed
        await app.webhook(event(AUTH, "acct_1", created=int(time.time())))
        await app.settle()
        assert not app.backend.installations.get("acct_1", "live").provisional


@pytest.mark.gen_test(timeout=30)
async def test_unauthenticated_install_requests_write_nothing(tmp_path):
    """Issue 13, section 3: `GET /install` issues a signed state and writes no row; the state is
    recorded only when a valid callback uses it, once."""
    async with running(base_env(tmp_path)) as app:

        def rows() -> dict[str, int]:
            return {m.__name__: m.select().count() for m in discover_models(SAMPLE_PACKAGES)}

        before = await app.backend.storage.run(rows)
        assert before["Replica"] == 1  # written before the server listens, never in between
        states = [(await start(app.client))[0] for _ in range(50)]
        async with httpx.AsyncClient(base_url=app.url) as stranger:  # no cookie, bad states
            for state in states[:5]:
                resp = await stranger.get("/callback/stripe", params=callback_params(state))
                assert resp.status_code == 403
        assert await app.backend.storage.run(rows) == before
        assert len(set(states)) == 50
        resp = await app.client.get("/callback/stripe", params=callback_params(states[-1]))
        assert resp.status_code == 200
        assert await app.backend.storage.run(lambda: InstallState.select().count()) == 1
        again = await app.client.get("/callback/stripe", params=callback_params(states[-1]))
        assert again.status_code == 403 and again.json()["error"]["code"] == "bad_state"
