"""Credentials for third-party systems (issue 15): the vault over HTTP, roles, encryption at
rest and rotation, `ctx.credentials` in jobs and event handlers, `ctx.http`, and OAuth 2 against
a token endpoint that runs on loopback. Everything is the real app on a loopback port with a real
SQLite file; signatures are made by the `stripe` library."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
import tornado.web
from conftest import APP_SECRET, WH_TEST, base_env, compact, event, free_port, running, sign
from cryptography.fernet import Fernet, InvalidToken
from tornado.httpserver import HTTPServer

from cli.main import main as cli_main
from jobs.oauth import OAuthProvider, OAuthProviders
from jobs.registry import Registry, job, on_event
from models.credentials import Credential
from models.events import WebhookEvent
from models.installation import apply_state
from models.jobs import JobRun
from service.config import Config, ConfigError

KEY_1 = Fernet.generate_key().decode()
KEY_2 = Fernet.generate_key().decode()
IDS = {"user_id": "usr_1", "account_id": "acct_1"}
# What `userContext.roles` holds in @stripe/ui-extension-sdk 9.3, as the extension sends it.
ADMIN = {"id": "admin", "name": "Administrator", "type": "builtIn"}
CUSTOM = {"id": "rol_custom_1", "name": "Integrations", "type": "custom"}
NO_ID = {"name": "Legacy role", "type": "builtIn"}
SECRET_VALUE = "sk-third-party-5f0c1d2e3a4b"


def env(tmp_path, **extra):
    return base_env(tmp_path, **{"CREDENTIALS_KEYS": KEY_1, "SCHEDULER": "off", **extra})


async def install(app, account="acct_1", mode="live"):
    view, _ = await app.backend.storage.run(apply_state, account, mode, True, int(time.time()),
                                            "test")
    app.backend.installations.put(view)


def body(roles=(ADMIN,), **fields):
    payload = dict(fields)
    if roles is not None:
        payload["stripe_roles"] = list(roles)
    return {**payload, **IDS}


async def set_credential(app, name="acme_key", value=SECRET_VALUE, mode="live", roles=(ADMIN,)):
    return await app.signed("/api/credentials/set",
                            body(roles, mode=mode, name=name, value=value))


async def listed(app):
    resp = await app.signed("/api/credentials/list", IDS)
    assert resp.status_code == 200, resp.text
    return resp.json()["credentials"]


async def stored_rows(app):
    return await app.backend.storage.run(lambda: list(Credential.select()))


# ---- the endpoints ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_set_list_delete_with_the_sdks_role_definitions(tmp_path):
    async with running(env(tmp_path)) as app:
        await install(app)
        await install(app, mode="test")
        roles = (NO_ID, CUSTOM, ADMIN)  # the SDK's objects, one without an id (older accounts)
        resp = await set_credential(app, roles=roles)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["name"] == "acme_key" and answer["mode"] == "live"
        assert isinstance(answer["updated"], int)
        assert (await set_credential(app, name="other", value="x", mode="test")).status_code == 200
        credentials = await listed(app)
        assert [(c["name"], c["mode"], c["kind"]) for c in credentials] == [
            ("acme_key", "live", "secret"), ("other", "test", "secret")]
        assert credentials[0]["updated"] == answer["updated"]
        assert all(set(c) == {"name", "mode", "kind", "updated"} for c in credentials)
        # at rest: a Fernet token under the first key, never the value
        (row, _) = sorted(await stored_rows(app), key=lambda r: r.name)
        assert SECRET_VALUE not in row.value
        assert Fernet(KEY_1).decrypt(row.value.encode()).decode() == SECRET_VALUE
        assert (row.account_id, row.mode, row.updated_by) == ("acct_1", "live", "usr_1")
        # replacing keeps one row
        assert (await set_credential(app, value="new-value")).status_code == 200
        assert len(await stored_rows(app)) == 2
        resp = await app.signed("/api/credentials/delete",
                                body(roles, mode="live", name="acme_key"))
        assert resp.json() == {"name": "acme_key", "mode": "live", "deleted": True}
        resp = await app.signed("/api/credentials/delete",
                                body(roles, mode="live", name="acme_key"))
        assert resp.json()["deleted"] is False
        assert [c["name"] for c in await listed(app)] == ["other"]


@pytest.mark.gen_test(timeout=30)
async def test_roles_as_objects_or_ids_and_the_configured_roles(tmp_path):
    async with running(env(tmp_path)) as app:
        await install(app)
        # the signed request sees role ids, from objects and plain strings alike
        resp = await app.signed("/api/whoami", body((NO_ID, CUSTOM, "developer", ADMIN)))
        assert resp.status_code == 200, resp.text
        assert resp.json()["roles"] == ["rol_custom_1", "developer", "admin"]
        assert (await set_credential(app, roles=("super_admin",))).status_code == 200
        for roles in ((CUSTOM,), (NO_ID,), ("developer", "view_only"), (), None):
            resp = await set_credential(app, roles=roles)
            assert resp.status_code == 403, roles
            assert resp.json()["error"]["code"] == "role_required"
            resp = await app.signed("/api/credentials/delete",
                                    body(roles, mode="live", name="acme_key"))
            assert resp.status_code == 403
        # listing needs no role
        assert [c["name"] for c in await listed(app)] == ["acme_key"]
        bad = compact(body(({"id": 7, "name": "x"},), mode="live", name="n", value="v"))
        assert (await app.signed("/api/credentials/set", bad)).status_code == 400
    async with running(env(tmp_path, CREDENTIAL_ROLES="rol_custom_1")) as app:
        assert (await set_credential(app, roles=(CUSTOM,))).status_code == 200
        assert (await set_credential(app, roles=(ADMIN,))).status_code == 403


@pytest.mark.gen_test(timeout=30)
async def test_the_value_must_be_covered_by_the_signature(tmp_path):
    async with running(env(tmp_path)) as app:
        await install(app)
        raw = compact(body(mode="live", name="acme_key", value=SECRET_VALUE))
        # signed over the canonical {"user_id","account_id"} only: the fallback covers no value
        resp = await app.signed("/api/credentials/set", raw, header=sign(compact(IDS),
                                                                         APP_SECRET))
        assert resp.status_code == 401, resp.text
        assert "not covered by the signature" in resp.json()["error"]["message"]
        assert await stored_rows(app) == []


@pytest.mark.gen_test(timeout=30)
async def test_malformed_fields_and_modes_not_installed(tmp_path):
    async with running(env(tmp_path)) as app:
        await install(app)
        cases = [({"mode": "prod", "name": "a", "value": "v"}, 400),
                 ({"mode": "live", "name": "Bad-Name", "value": "v"}, 400),
                 ({"mode": "live", "name": "a" * 65, "value": "v"}, 400),
                 ({"mode": "live", "name": "a", "value": "v" * 4097}, 400),
                 ({"mode": "live", "name": "a", "value": 12}, 400),
                 ({"mode": "live", "name": "a", "value": ""}, 400),
                 ({"mode": "test", "name": "a", "value": "v"}, 403)]
        for fields, status in cases:
            resp = await app.signed("/api/credentials/set", body(**fields))
            assert resp.status_code == status, (fields, resp.text)
        assert (await app.signed("/api/credentials/set",
                                 body(mode="live", name="a", value="v" * 4096))).status_code == 200
        resp = await app.signed("/api/credentials/delete", body(mode="test", name="a"))
        assert resp.json()["error"]["code"] == "not_installed"
        # not installed in any mode: every endpoint answers 403
        other = {"user_id": "usr_2", "account_id": "acct_2"}
        assert (await app.signed("/api/credentials/list", other)).status_code == 403


@pytest.mark.gen_test(timeout=30)
async def test_without_keys_the_feature_answers_503(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        for path, fields in (("set", {"mode": "live", "name": "a", "value": "v"}),
                             ("list", {}), ("delete", {"mode": "live", "name": "a"})):
            resp = await app.signed(f"/api/credentials/{path}", body(**fields))
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "not_configured"
    with pytest.raises(ConfigError, match="^CREDENTIALS_KEYS: key 2 is not a Fernet key"):
        Config.from_env({"CREDENTIALS_KEYS": f"{KEY_1},not-a-key"})
    assert Config.from_env({"CREDENTIALS_KEYS": f" {KEY_2} , {KEY_1} "}).credentials_keys == (
        KEY_2, KEY_1)


@pytest.mark.gen_test(timeout=30)
async def test_an_uninstall_deletes_the_accounts_credentials_in_that_mode(tmp_path):
    async with running(env(tmp_path)) as app:
        await install(app)
        await install(app, mode="test")
        assert (await set_credential(app, mode="live")).status_code == 200
        assert (await set_credential(app, mode="test")).status_code == 200
        await app.webhook(event("account.application.deauthorized", "acct_1", livemode=False),
                          secret=WH_TEST)
        await app.settle()
        assert [(c["name"], c["mode"]) for c in await listed(app)] == [("acme_key", "live")]


# ---- rotation --------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_rotation_with_two_keys(tmp_path, monkeypatch):
    reader = reading_job("acme_key")
    async with running(env(tmp_path), registry=registry_of(reader)) as app:
        await install(app)
        assert (await set_credential(app)).status_code == 200
    # a new key goes first; the old one still decrypts what it encrypted
    async with running(env(tmp_path, CREDENTIALS_KEYS=f"{KEY_2},{KEY_1}"),
                       registry=registry_of(reader)) as app:
        assert await fire(app, "reader") == "succeeded"
        assert reader.seen == [SECRET_VALUE]
        assert (await set_credential(app, name="newer", value="second")).status_code == 200
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/app.db")
    monkeypatch.setenv("CREDENTIALS_KEYS", f"{KEY_2},{KEY_1}")
    assert cli_main(["credentials", "rotate"]) == 0
    async with running(env(tmp_path, CREDENTIALS_KEYS=KEY_2),
                       registry=registry_of(reader)) as app:
        for row in await stored_rows(app):
            Fernet(KEY_2).decrypt(row.value.encode())
            with pytest.raises(InvalidToken):
                Fernet(KEY_1).decrypt(row.value.encode())
        assert await fire(app, "reader") == "succeeded"
        assert reader.seen == [SECRET_VALUE, SECRET_VALUE]
    # a value no configured key reads is reported (by name) and left alone
    monkeypatch.setenv("CREDENTIALS_KEYS", KEY_1)
    assert cli_main(["credentials", "rotate"]) == 1
    monkeypatch.delenv("CREDENTIALS_KEYS")
    assert cli_main(["credentials", "rotate"]) == 2


# ---- jobs and event handlers -----------------------------------------------------------------

def reading_job(name: str, job_name: str = "reader"):
    @job(job_name, every=3600, attempts=3, retry_delay=0.01)
    async def reader(ctx):
        reader.seen.append(await ctx.credentials.get(name))

    reader.seen = []
    return reader


def registry_of(*funcs) -> Registry:
    """A registry of only these jobs and handlers (not the shipped example job)."""
    registry = Registry()
    for f in funcs:
        if hasattr(f, "__job_spec__"):
            registry.jobs[f.__job_spec__.name] = f.__job_spec__
        for type_ in getattr(f, "__event_types__", ()):
            registry.handlers.setdefault(type_, []).append(f)
    return registry


_FIRE_TIMES = itertools.count(1_767_225_600)  # each fire its own time: the claim's key


async def fire(app, name, mode="live"):
    """Run a job now, as `run.py jobs run` does, recorded like any run."""
    return await app.backend.runner.fire(
        name, "acct_1", mode, datetime.fromtimestamp(next(_FIRE_TIMES), UTC), force=True)


@pytest.mark.gen_test(timeout=30)
async def test_a_job_reads_its_credential_and_a_missing_one_is_not_configured(tmp_path):
    reader = reading_job("acme_key")
    async with running(env(tmp_path), registry=registry_of(reader)) as app:
        await install(app)
        assert await fire(app, "reader") == "not_configured"
        (run,) = await app.backend.storage.run(lambda: list(JobRun.select()))
        assert (run.outcome, run.attempt) == ("not_configured", 1)  # not retried
        assert "credential 'acme_key' is not set for acct_1 in live mode" in run.error
        assert (await set_credential(app)).status_code == 200
        assert await fire(app, "reader") == "succeeded"
        assert reader.seen == [SECRET_VALUE]
        # the other mode has its own credentials
        await install(app, mode="test")
        assert await fire(app, "reader", mode="test") == "not_configured"
    async with running(base_env(tmp_path, SCHEDULER="off"), registry=registry_of(reader)) as app:
        assert await fire(app, "reader") == "not_configured"  # no CREDENTIALS_KEYS


@pytest.mark.gen_test(timeout=30)
async def test_an_event_handler_reads_the_accounts_credential(tmp_path):
    seen = []

    @on_event("customer.created")
    async def on_customer(ctx):
        seen.append((ctx.account_id, ctx.mode, await ctx.credentials.get("acme_key")))

    async with running(env(tmp_path), registry=registry_of(on_customer)) as app:
        await install(app, mode="test")
        assert (await set_credential(app, mode="test")).status_code == 200
        await app.webhook(event("customer.created", "acct_1", livemode=False), secret=WH_TEST)
        await app.settle()
        assert seen == [("acct_1", "test", SECRET_VALUE)]


@pytest.mark.gen_test(timeout=30)
async def test_an_event_whose_credential_is_missing_is_dead_at_once_and_replays_later(tmp_path):
    """A missing credential is not mended by a retry: the event is `dead` after one attempt
    (not retried for hours), and a replay once the credential is set processes it."""
    seen = []

    @on_event("customer.created")
    async def on_customer(ctx):
        seen.append(await ctx.credentials.get("acme_key"))

    async with running(env(tmp_path), registry=registry_of(on_customer)) as app:
        await install(app, mode="test")
        ev = event("customer.created", "acct_1", livemode=False)
        await app.webhook(ev, secret=WH_TEST)
        await app.settle()
        row = await app.backend.storage.run(WebhookEvent.get_by_id, ev["id"])
        assert (row.status, row.attempts, row.next_attempt_at) == ("dead", 1, None)
        assert row.last_error.startswith("not_configured: ") and seen == []
        assert (await set_credential(app, mode="test")).status_code == 200
        assert await app.backend.events.process(ev["id"], force=True) == "processed"
        assert seen == [SECRET_VALUE]


@pytest.mark.gen_test(timeout=60)
async def test_a_value_is_never_in_a_log_an_answer_or_the_metrics(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    reader = reading_job("acme_key")

    @job("leaky", every=3600, attempts=2, retry_delay=0.01)
    async def leaky(ctx):
        await ctx.credentials.get("acme_key")
        raise RuntimeError("the third party said no")

    answers = []
    async with running(env(tmp_path), registry=registry_of(reader, leaky)) as app:
        await install(app)
        answers.append(await set_credential(app))
        answers.append(await set_credential(app, value=SECRET_VALUE + "x" * 5000))  # 400
        answers.append(await set_credential(app, roles=("developer",)))  # 403
        answers.append(await set_credential(app, mode="test"))  # 403, not installed
        answers.append(await app.signed(
            "/api/credentials/set", compact(body(mode="live", name="acme_key",
                                                 value=SECRET_VALUE)),
            header=sign(compact(IDS), APP_SECRET)))  # 401
        answers.append(await app.signed("/api/credentials/list", IDS))
        answers.append(await app.signed("/api/whoami", body(mode="live", name="acme_key",
                                                            value=SECRET_VALUE)))
        assert await fire(app, "reader") == "succeeded"
        assert await fire(app, "leaky") == "failed"
        answers.append(await app.client.get("/metrics"))
        answers.append(await app.client.get("/healthz"))
        runs = await app.backend.storage.run(lambda: list(JobRun.select()))
    assert [a.status_code for a in answers[:5]] == [200, 400, 403, 403, 401]
    for resp in answers:  # whoami too: it shows the names of the signed fields, not values
        assert SECRET_VALUE not in resp.text
    assert all(SECRET_VALUE not in (r.error or "") for r in runs)
    assert SECRET_VALUE not in caplog.text
    assert "acme_key" in caplog.text or "job reader" in caplog.text


# ---- ctx.http --------------------------------------------------------------------------------

class Flaky(tornado.web.RequestHandler):
    """Answers 503 `failures` times, then 200; records what it received."""

    def initialize(self, state):
        self.state = state

    def _answer(self):
        self.state["seen"].append((self.request.method, self.request.headers.get("User-Agent")))
        if self.state["failures"] > 0:
            self.state["failures"] -= 1
            self.set_status(503)
            self.finish({"error": "busy"})
        else:
            self.finish({"ok": True})

    def get(self):
        self._answer()

    def post(self):
        self._answer()


@contextlib.asynccontextmanager
async def loopback(routes):
    port = free_port()
    server = HTTPServer(tornado.web.Application(routes))
    server.listen(port, "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.gen_test(timeout=60)
async def test_ctx_http_retries_a_5xx_with_backoff_and_names_itself(tmp_path):
    state = {"failures": 2, "seen": []}
    results = []

    @job("caller", every=3600, attempts=1)
    async def caller(ctx):
        resp = await ctx.http.get(caller.url)
        results.append(resp.status_code)

    async with loopback([(r"/thing", Flaky, {"state": state})]) as url, \
            running(env(tmp_path), registry=registry_of(caller)) as app:
        await install(app)
        caller.url = f"{url}/thing"
        assert await fire(app, "caller") == "succeeded"
        assert results == [200]
        assert [m for m, _ in state["seen"]] == ["GET", "GET", "GET"]
        assert state["seen"][0][1].startswith("stripe-app-backend/")
        # a POST may already have had its effect: a 5xx is not retried
        state.update(failures=1, seen=[])
        resp = await app.backend.http.post(f"{url}/thing", json={})
        assert resp.status_code == 503 and len(state["seen"]) == 1


# ---- OAuth 2 ---------------------------------------------------------------------------------

class TokenEndpoint(tornado.web.RequestHandler):
    """A small authorization server's token endpoint, as RFC 6749 sections 4.1.3, 5 and 6 (with
    RFC 7636's PKCE) describe it: form-encoded POST, client authentication with HTTP Basic,
    answers as JSON with `Cache-Control: no-store`, errors as 400 `{"error": ...}`."""

    def initialize(self, server):
        self.server = server

    def error(self, code, status=400):
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish({"error": code})

    def token(self, expires_in):
        n = self.server["issued"] = self.server["issued"] + 1
        refresh = f"refresh-token-{n}"
        self.server["refresh_tokens"].add(refresh)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")
        self.finish({"access_token": f"access-token-{n}", "token_type": "Bearer",
                     "expires_in": expires_in, "refresh_token": refresh, "scope": "read"})

    def post(self):
        self.server["requests"].append(self.request)
        if not self.request.headers.get("Content-Type", "").startswith(
                "application/x-www-form-urlencoded"):
            return self.error("invalid_request")
        auth = self.request.headers.get("Authorization", "")
        clients = self.server.get("clients", [("client-1", "client-secret-1")])
        if auth not in {basic(*pair) for pair in clients}:
            self.set_header("WWW-Authenticate", "Basic")
            return self.error("invalid_client", 401)
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode()).items()}
        if form.get("grant_type") == "authorization_code":
            grant = self.server["codes"].pop(form.get("code"), None)
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return self.error("invalid_grant")
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if challenge != grant["challenge"]:
                return self.error("invalid_grant")
            return self.token(self.server["first_expires_in"])
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.server["refresh_tokens"]:
                return self.error("invalid_grant")
            self.server["refresh_tokens"].discard(form["refresh_token"])
            self.server["refreshes"] += 1
            return self.token(3600)
        return self.error("unsupported_grant_type")


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def pkce_pair(verifier="v" * 50):
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


REDIRECT = "https://dashboard.stripe.com/test/apps-oauth/com.example.testapp"


@pytest.mark.gen_test(timeout=60)
async def test_oauth_exchange_stores_the_token_and_refreshes_it_before_it_expires(tmp_path,
                                                                                  caplog):
    caplog.set_level(logging.DEBUG)
    verifier, challenge = pkce_pair()
    server = {"codes": {"code-1": {"challenge": challenge, "redirect_uri": REDIRECT}},
              "issued": 0, "refresh_tokens": set(), "refreshes": 0, "requests": [],
              # shorter than the one-minute leeway: the first token is due for a refresh at once
              "first_expires_in": 30}
    tokens = []

    @job("use_acme", every=3600, attempts=1)
    async def use_acme(ctx):
        tokens.append(await ctx.credentials.get("acme"))

    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        acme = OAuthProvider("acme", f"{url}/oauth/token", "ACME_CLIENT_ID",
                             "ACME_CLIENT_SECRET", redirect_uri=REDIRECT)
        providers = OAuthProviders([acme], {"ACME_CLIENT_ID": "client-1",
                                            "ACME_CLIENT_SECRET": "client-secret-1"})
        async with running(env(tmp_path), registry=registry_of(use_acme),
                           oauth=providers) as app:
            await install(app)
            path = "/api/oauth/acme/exchange"
            wrong = await app.signed(path, body(mode="live", code="code-1", verifier="w" * 50))
            assert wrong.status_code == 400
            assert wrong.json()["error"] == {"code": "oauth_refused",
                                             "message": "acme refused the code: invalid_grant"}
            server["codes"]["code-1"] = {"challenge": challenge, "redirect_uri": REDIRECT}
            assert (await app.signed(path, body(("developer",), mode="live", code="code-1",
                                                verifier=verifier))).status_code == 403
            resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier))
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert answer["provider"] == "acme" and answer["connected"] is True
            assert "access-token-1" not in resp.text and "refresh-token-1" not in resp.text
            # the code is single-use at the provider
            again = await app.signed(path, body(mode="live", code="code-1", verifier=verifier))
            assert again.status_code == 400
            form = parse_qs(server["requests"][1].body.decode())
            assert form["grant_type"] == ["authorization_code"]
            assert form["code_verifier"] == [verifier] and form["redirect_uri"] == [REDIRECT]
            (row,) = await stored_rows(app)
            assert row.kind == "oauth" and "access-token-1" not in row.value
            assert [c["kind"] for c in await listed(app)] == ["oauth"]
            # a job gets a refreshed access token: the first one expires within the leeway
            assert await fire(app, "use_acme") == "succeeded"
            assert tokens == ["access-token-2"] and server["refreshes"] == 1
            refresh = parse_qs(server["requests"][-1].body.decode())
            assert refresh["grant_type"] == ["refresh_token"]
            assert refresh["refresh_token"] == ["refresh-token-1"]
            # now valid for an hour: read concurrently, no refresh
            creds = app.backend.vault.for_account("acct_1", "live")
            assert await asyncio.gather(*(creds.get("acme") for _ in range(5))) == [
                "access-token-2"] * 5
            assert server["refreshes"] == 1
            token = await creds.oauth_token("acme")
            assert token["refresh_token"] == "refresh-token-2"
            assert token["expires_at"] > time.time() + 3000
            # unknown provider, unsigned code
            assert (await app.signed("/api/oauth/nope/exchange",
                                     body(mode="live", code="c", verifier=verifier))
                    ).status_code == 404
            raw = compact(body(mode="live", code="c", verifier=verifier))
            assert (await app.signed(path, raw, header=sign(compact(IDS), APP_SECRET))
                    ).status_code == 401
    for secret in ("access-token-", "refresh-token-", "client-secret-1", verifier):
        assert secret not in caplog.text
    assert "refreshed the acme OAuth token of acct_1/live" in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_oauth_expired_token_that_cannot_refresh_is_not_configured(tmp_path):
    verifier, challenge = pkce_pair()
    server = {"codes": {"code-1": {"challenge": challenge, "redirect_uri": REDIRECT}},
              "issued": 0, "refresh_tokens": set(), "refreshes": 0, "requests": [],
              "first_expires_in": 30}
    tokens = []

    @job("use_acme", every=3600, attempts=3, retry_delay=0.01)
    async def use_acme(ctx):
        tokens.append(await ctx.credentials.get("acme"))

    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        acme = OAuthProvider("acme", f"{url}/oauth/token", "ACME_CLIENT_ID",
                             "ACME_CLIENT_SECRET", redirect_uri=REDIRECT)
        unset = OAuthProviders([acme], {})
        async with running(env(tmp_path), oauth=unset) as app:
            await install(app)
            resp = await app.signed("/api/oauth/acme/exchange",
                                    body(mode="live", code="code-1", verifier=verifier))
            assert resp.status_code == 503 and server["requests"] == []
        providers = OAuthProviders([acme], {"ACME_CLIENT_ID": "client-1",
                                            "ACME_CLIENT_SECRET": "client-secret-1"})
        async with running(env(tmp_path), registry=registry_of(use_acme),
                           oauth=providers) as app:
            resp = await app.signed("/api/oauth/acme/exchange",
                                    body(mode="live", code="code-1", verifier=verifier))
            assert resp.status_code == 200
            server["refresh_tokens"].clear()  # the provider revoked the grant
            assert await fire(app, "use_acme") == "not_configured"
            (run,) = await app.backend.storage.run(lambda: list(JobRun.select()))
            assert run.attempt == 1 and "invalid_grant" in run.error
            assert tokens == []


@pytest.mark.gen_test(timeout=60)
async def test_the_vault_on_sqlite_and_postgresql(tmp_path, db_url, monkeypatch):
    async with running(env(tmp_path, DATABASE_URL=db_url)) as app:
        await install(app)
        assert (await set_credential(app, value="first")).status_code == 200
        assert (await set_credential(app, value="second")).status_code == 200  # an upsert
        assert [c["name"] for c in await listed(app)] == ["acme_key"]
        assert await app.backend.vault.get("acct_1", "live", "acme_key") == "second"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CREDENTIALS_KEYS", f"{KEY_2},{KEY_1}")
    assert cli_main(["credentials", "rotate"]) == 0
    async with running(env(tmp_path, DATABASE_URL=db_url, CREDENTIALS_KEYS=KEY_2)) as app:
        assert await app.backend.vault.get("acct_1", "live", "acme_key") == "second"


# ---- issue 23: odd text, redirect URIs, one name space ------------------------------------------

def escaped(value) -> str:
    """JSON as `JSON.stringify` writes a lone surrogate: as its `\\ud800` escape."""
    import json

    return json.dumps(value, separators=(",", ":"))


@pytest.mark.gen_test(timeout=30)
async def test_a_lone_surrogate_in_a_value_is_a_400_and_nothing_is_stored(tmp_path, caplog):
    async with running(env(tmp_path)) as app:
        await install(app)
        raw = escaped(body(mode="live", name="acme_key", value="a\ud800b"))
        assert "\\ud800" in raw
        resp = await app.signed("/api/credentials/set", raw)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "bad_request"
        assert "surrogate" in resp.json()["error"]["message"]
        assert await stored_rows(app) == []
        assert "Traceback" not in caplog.text and "-> 500" not in caplog.text
        # a pair is text: stored and read back
        raw = escaped(body(mode="live", name="acme_key", value="a\ud83d\ude00b"))
        assert (await app.signed("/api/credentials/set", raw)).status_code == 200
        assert await app.backend.vault.get("acct_1", "live", "acme_key") == "a\U0001F600b"


def acme_at(url, **kw):
    return OAuthProvider("acme", f"{url}/oauth/token", "ACME_CLIENT_ID", "ACME_CLIENT_SECRET",
                         redirect_uri=REDIRECT, **kw)


ACME_ENV = {"ACME_CLIENT_ID": "client-1", "ACME_CLIENT_SECRET": "client-secret-1"}
LIVE_REDIRECT = "https://dashboard.stripe.com/apps-oauth/com.example.testapp"


def token_server(code_redirects):
    verifier, challenge = pkce_pair()
    return verifier, {"codes": {code: {"challenge": challenge, "redirect_uri": uri}
                                for code, uri in code_redirects.items()},
                      "issued": 0, "refresh_tokens": set(), "refreshes": 0, "requests": [],
                      "first_expires_in": 3600}


@pytest.mark.gen_test(timeout=60)
async def test_the_exchange_sends_only_the_providers_redirect_uris(tmp_path):
    verifier, server = token_server({"code-1": LIVE_REDIRECT, "code-2": REDIRECT})
    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        providers = OAuthProviders([acme_at(url, redirect_uris=(LIVE_REDIRECT,))], ACME_ENV)
        async with running(env(tmp_path), oauth=providers) as app:
            await install(app)
            path = "/api/oauth/acme/exchange"
            for evil in ("https://evil.example/cb", REDIRECT + "/", REDIRECT.upper(), ""):
                resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier,
                                                   redirect_uri=evil))
                assert resp.status_code == 400, (evil, resp.text)
                assert resp.json()["error"]["code"] in ("bad_redirect_uri", "bad_request")
            resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier,
                                               redirect_uri="https://evil.example/cb"))
            assert resp.json()["error"]["code"] == "bad_redirect_uri"
            # a lone surrogate in the code is refused before anything is sent, too
            raw = escaped(body(mode="live", code="code-\udc00", verifier=verifier))
            assert (await app.signed(path, raw)).status_code == 400
            assert server["requests"] == [] and await stored_rows(app) == []
            # one of the provider's: sent as given; none given: the default
            resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier,
                                               redirect_uri=LIVE_REDIRECT))
            assert resp.status_code == 200, resp.text
            resp = await app.signed(path, body(mode="test", code="code-2", verifier=verifier))
            assert resp.status_code == 403  # not installed in test mode: nothing sent
            resp = await app.signed(path, body(mode="live", code="code-2", verifier=verifier))
            assert resp.status_code == 200, resp.text
            sent = [parse_qs(r.body.decode())["redirect_uri"] for r in server["requests"]]
            assert sent == [[LIVE_REDIRECT], [REDIRECT]]
        # the jobs layer refuses it too, whoever calls it
        with pytest.raises(ValueError, match="not one of the OAuth provider"):
            await providers.exchange(providers.get("acme"), "code-3", verifier,
                                     "https://evil.example/cb")
        assert len(server["requests"]) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_credential_never_replaces_an_oauth_token_nor_the_reverse(tmp_path):
    verifier, server = token_server({"code-1": REDIRECT, "code-2": REDIRECT})
    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        providers = OAuthProviders([acme_at(url)], ACME_ENV)
        # a secret named "acme", stored while no provider of that name was declared
        async with running(env(tmp_path), oauth=OAuthProviders([])) as app:
            await install(app)
            assert (await set_credential(app, name="acme", value="plain")).status_code == 200
        async with running(env(tmp_path), oauth=providers) as app:
            # the exchange may not replace it: 409 before the code is sent
            path = "/api/oauth/acme/exchange"
            resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier))
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "name_taken"
            assert "delete it" in resp.json()["error"]["message"]
            assert server["requests"] == []
            assert await app.backend.vault.get("acct_1", "live", "acme") == "plain"
            # and the vault refuses it whoever calls it
            with pytest.raises(ValueError, match="delete it before connecting"):
                await app.backend.vault.set_oauth("acct_1", "live", "acme",
                                                  {"access_token": "x"})
            assert await app.backend.vault.get("acct_1", "live", "acme") == "plain"
            # once deleted, the provider connects
            resp = await app.signed("/api/credentials/delete", body(mode="live", name="acme"))
            assert resp.json()["deleted"] is True
            resp = await app.signed(path, body(mode="live", code="code-1", verifier=verifier))
            assert resp.status_code == 200, resp.text
            # now a secret may not take its name: 409, the token untouched
            resp = await set_credential(app, name="acme", value="overwrite")
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "name_taken"
            assert await app.backend.vault.get("acct_1", "live", "acme") == "access-token-1"
            (row,) = await stored_rows(app)
            assert row.kind == "oauth"
        # nor when the provider is no longer declared: the stored token keeps its name
        async with running(env(tmp_path), oauth=OAuthProviders([])) as app:
            resp = await set_credential(app, name="acme", value="overwrite")
            assert resp.status_code == 409, resp.text
            assert "OAuth connection" in resp.json()["error"]["message"]
            (row,) = await stored_rows(app)
            assert row.kind == "oauth"


# ---- OAuth in a sandbox (issue 26) -----------------------------------------------------------

SANDBOX_PAIR = ("sandbox-client-9", "sandbox-secret-9")


@pytest.mark.gen_test(timeout=60)
async def test_a_sandbox_install_uses_the_providers_sandbox_client(tmp_path, caplog):
    """A provider that declares a sandbox client exchanges and refreshes a sandbox install's
    token with that pair only; unset, it is not configured in sandbox mode (503, nothing sent),
    never the live pair instead. Live mode keeps its pair."""
    verifier, server = token_server({"code-1": REDIRECT, "code-2": REDIRECT,
                                     "code-3": REDIRECT})
    server["first_expires_in"] = 30  # due for a refresh at once
    server["clients"] = [("client-1", "client-secret-1"), SANDBOX_PAIR]
    tokens = []

    @job("use_acme", every=3600, attempts=1)
    async def use_acme(ctx):
        tokens.append(await ctx.credentials.get("acme"))

    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        acme = acme_at(url, sandbox_client_id_env="ACME_SANDBOX_CLIENT_ID",
                       sandbox_client_secret_env="ACME_SANDBOX_CLIENT_SECRET")
        path = "/api/oauth/acme/exchange"
        # the sandbox pair unset: 503 in sandbox mode, nothing sent; live mode unaffected
        unset = OAuthProviders([acme], ACME_ENV)
        assert unset.disabled() == [
            "ACME_SANDBOX_CLIENT_ID/ACME_SANDBOX_CLIENT_SECRET unset: OAuth provider 'acme' "
            "answers 503 in sandbox mode"]
        async with running(env(tmp_path), oauth=unset) as app:
            await install(app, mode="sandbox")
            resp = await app.signed(path, body(mode="sandbox", code="code-1", verifier=verifier))
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "not_configured"
            assert server["requests"] == []
        providers = OAuthProviders([acme], {
            **ACME_ENV, "ACME_SANDBOX_CLIENT_ID": SANDBOX_PAIR[0],
            "ACME_SANDBOX_CLIENT_SECRET": SANDBOX_PAIR[1]})
        assert providers.disabled() == []
        async with running(env(tmp_path), registry=registry_of(use_acme),
                           oauth=providers) as app:
            await install(app, mode="sandbox")
            await install(app, mode="live")
            resp = await app.signed(path, body(mode="sandbox", code="code-1", verifier=verifier))
            assert resp.status_code == 200, resp.text
            assert resp.json()["mode"] == "sandbox"
            assert server["requests"][-1].headers["Authorization"] == basic(*SANDBOX_PAIR)
            # the refresh, in a sandbox job, with the sandbox pair too
            assert await fire(app, "use_acme", "sandbox") == "succeeded"
            assert tokens == ["access-token-2"] and server["refreshes"] == 1
            refresh = server["requests"][-1]
            assert parse_qs(refresh.body.decode())["grant_type"] == ["refresh_token"]
            assert refresh.headers["Authorization"] == basic(*SANDBOX_PAIR)
            # live mode: the live pair, for the exchange and the refresh
            resp = await app.signed(path, body(mode="live", code="code-2", verifier=verifier))
            assert resp.status_code == 200, resp.text
            assert server["requests"][-1].headers["Authorization"] == basic(
                "client-1", "client-secret-1")
            assert await fire(app, "use_acme", "live") == "succeeded"
            assert server["requests"][-1].headers["Authorization"] == basic(
                "client-1", "client-secret-1")
            assert server["refreshes"] == 2
            # a bad mode names the three
            resp = await app.signed(path, body(mode="prod", code="code-3", verifier=verifier))
            assert resp.status_code == 400
            assert resp.json()["error"]["message"] == 'mode must be "live", "test" or "sandbox"'
    assert "sandbox-secret-9" not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_a_provider_without_a_sandbox_client_uses_its_one_pair_in_a_sandbox(tmp_path):
    verifier, server = token_server({"code-1": REDIRECT})
    async with loopback([(r"/oauth/token", TokenEndpoint, {"server": server})]) as url:
        providers = OAuthProviders([acme_at(url)], ACME_ENV)
        async with running(env(tmp_path), oauth=providers) as app:
            await install(app, mode="sandbox")
            resp = await app.signed("/api/oauth/acme/exchange",
                                    body(mode="sandbox", code="code-1", verifier=verifier))
            assert resp.status_code == 200, resp.text
            assert server["requests"][-1].headers["Authorization"] == basic(
                "client-1", "client-secret-1")
            # a sandbox credential is the sandbox's alone
            assert (await set_credential(app, name="acme_key", mode="sandbox")).status_code == 200
            assert {(c["name"], c["mode"]) for c in await listed(app)} == {
                ("acme", "sandbox"), ("acme_key", "sandbox")}
    with pytest.raises(ValueError, match="declare both"):
        OAuthProvider("half", "https://auth.example/token", "A", "B",
                      sandbox_client_id_env="C")
