"""The whole HTTP surface against its description (issue 13, section 2): schemathesis generates
requests from `docs/openapi.yaml`, valid and invalid (its positive and negative modes, and its
examples and coverage phases), and sends them to a real backend on loopback. No answer may be a
5xx, and every answer must match the description: status, content type, headers and body.

Half of the generated `/api/...` bodies (chosen by the body, not by chance) are signed as the
UI extension's would be, so that the endpoints' success paths are described and checked too;
the account `acct_1` is installed in live mode. Every feature is on: the credentials vault
(`CREDENTIALS_KEYS`), an OAuth provider `acme` whose token endpoint is served on loopback, the
registry's tasks (queued only: `TASK_CONCURRENCY=0`), and the status page (`OPERATOR_TOKEN`):
half of the `/status` requests (chosen the same way) carry the operator's bearer token, as an
explicit credential, so that schemathesis also checks that the pages refuse a request without
it or with a wrong one. Example counts: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import tornado.web
from conftest import APP_SECRET, ROOT, WH_LIVE, base_env, free_port, make_event, sign
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from jobs.oauth import OAuthProvider, OAuthProviders
from models.installation import apply_state
from models.tasks import enqueue
from service.config import Config
from service.server import Backend
from service.signatures import extension_signed_string

#: Generated cases per operation and phase (kept modest: the suite stays fast).
MAX_EXAMPLES = 15
OPERATOR_TOKEN = "operator-token-for-the-openapi-test"
#: A fixed Fernet key (32 bytes, URL-safe base64): the vault is on.
CREDENTIALS_KEY = "b3BlbmFwaS10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE="
#: The code the loopback OAuth provider accepts (the description's example sends it).
GOOD_CODE = "good-code"
TASK_ID = re.compile(r"task_[0-9a-f]{32}")

schema = schemathesis.openapi.from_path(
    os.path.join(ROOT, "docs", "openapi.yaml"),
    config=schemathesis.config.SchemathesisConfig.from_dict({
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "mode": "all"},
    }))


class _TokenEndpoint(tornado.web.RequestHandler):
    """The `acme` provider's token endpoint (RFC 6749 section 4.1.3): a token for `GOOD_CODE`,
    `invalid_grant` for any other code."""

    def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.get_body_argument("code", "") != GOOD_CODE:
            self.set_status(400)
            self.finish({"error": "invalid_grant"})
            return
        self.finish({"access_token": "access-token", "token_type": "Bearer",
                     "expires_in": 3600, "scope": "read"})


class _LiveBackend:
    """A Backend serving from its own event loop in a thread, for synchronous clients."""

    def __init__(self, env: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        acme = OAuthProvider("acme", f"http://127.0.0.1:{env['PORT']}/test-oauth/token",
                             "ACME_CLIENT_ID", "ACME_CLIENT_SECRET")
        oauth = OAuthProviders([acme], {"ACME_CLIENT_ID": "client-1",
                                        "ACME_CLIENT_SECRET": "client-secret-1"})
        self.backend = Backend(Config.from_env(env), oauth=oauth,
                               extra_routes=[(r"/test-oauth/token", _TokenEndpoint)])
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def __enter__(self) -> _LiveBackend:
        self.thread.start()
        self.run(self.backend.start())

        async def install() -> str:
            view, _ = await self.backend.storage.run(apply_state, "acct_1", "live", True,
                                                     int(time.time()), "test")
            self.backend.installations.put(view)
            task = await self.backend.storage.run(enqueue, "acct_1", "live", "sync_customers",
                                                  {}, 1, 100)
            return task.id

        #: A queued task of acct_1, whose status half of the signed status requests ask for.
        self.task_id: str = self.run(install())
        return self

    def answered(self) -> dict[str, int]:
        """Requests answered so far, by status code."""
        counts: dict[str, int] = {}
        for metric in self.backend.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    code = sample.labels["code"]
                    counts[code] = counts.get(code, 0) + int(sample.value)
        return counts

    def __exit__(self, *exc: object) -> None:
        self.run(self.backend.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_LiveBackend]:
    env = base_env(tmp_path_factory.mktemp("openapi"), SCHEDULER="off", MAX_BODY_SIZE="65536",
                   PORT=str(free_port()), CREDENTIALS_KEYS=CREDENTIALS_KEY,
                   OPERATOR_TOKEN=OPERATOR_TOKEN, TASK_CONCURRENCY="0", TASK_MAX_PENDING="5")
    backend = _LiveBackend(env)
    with backend:
        yield backend


@pytest.fixture(scope="module")
def live_url(live: _LiveBackend) -> str:
    return f"http://127.0.0.1:{live.backend.port}"


def _sign_like_stripe(case: Any, task_id: str) -> bool:
    """Sign the case's body as Stripe would (for the extension, or a webhook), for about half
    of the bodies (chosen by a checksum of the body); True when it did. A signed task status
    request asks for `task_id` (a task that exists) instead of the well-formed one generated."""
    body = case.body
    if "Stripe-Signature" not in (case.headers or {}):
        return False  # a case that leaves the header out on purpose
    if case.method != "POST" or not isinstance(body, dict):
        return False
    if zlib.crc32(repr(body).encode("utf-8", "backslashreplace")) % 2:
        return False  # the generated Stripe-Signature stays
    try:
        if case.path == "/webhooks":
            signed, secret = json.dumps(body), WH_LIVE
        elif isinstance(body.get("user_id"), str) and isinstance(body.get("account_id"), str):
            payload = {k: v for k, v in body.items() if k not in ("user_id", "account_id")}
            signed = extension_signed_string(payload, body["user_id"], body["account_id"])
            secret = APP_SECRET
        else:
            return False
        if case.path == "/api/tasks/status" and TASK_ID.fullmatch(str(body.get("task_id"))):
            payload["task_id"] = task_id
            signed = extension_signed_string(payload, body["user_id"], body["account_id"])
        # sent as signed, byte for byte
        case.body = json.loads(signed)
    except (TypeError, ValueError):  # not JSON as JavaScript writes it (NaN, say)
        return False
    case.headers = {**case.headers, "Stripe-Signature": sign(signed, secret)}
    return True


def _operator_headers(case: Any) -> dict[str, str] | None:
    """The operator's bearer token for about half of the `/status` cases (chosen by a checksum
    of the request), or None: the generated credentials (if any) stay."""
    if not case.path.startswith("/status"):
        return None
    if zlib.crc32(repr((case.path, case.query, case.body)).encode(
            "utf-8", "backslashreplace")) % 2:
        return None
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@schema.parametrize()
@settings(deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_description(case: Any, live: _LiveBackend,
                                              live_url: str) -> None:
    signed = _sign_like_stripe(case, live.task_id)
    headers = _operator_headers(case)
    excluded = []
    if case.path in ("/callback/stripe", "/api/oauth/{provider}/exchange") or (
            case.path == "/webhooks" and not signed):
        # By design, a valid `error` (the user cancelled) answers 400, and so do a webhook
        # whose signature does not verify (Stripe's convention) and a code the OAuth provider
        # refuses: see the description.
        excluded.append(positive_data_acceptance)
    if case.path.startswith("/status") and headers is None:
        # Without the token the answer is 303 or 401 before the input is read, by design.
        excluded += [positive_data_acceptance, negative_data_rejection]
    case.call_and_validate(base_url=live_url, timeout=20, excluded_checks=excluded,
                           headers=headers)


def test_the_run_reached_every_kind_of_answer(live: _LiveBackend) -> None:
    """After the generated cases (this test runs after them, in file order): the server, not
    only the client, saw many requests, a fair share of them signed successes, and no 5xx."""
    answered = live.answered()
    if not answered:
        pytest.skip("selected without the generated cases")
    assert sum(answered.values()) >= 300, answered
    assert answered.get("200", 0) >= 10, answered
    assert not [code for code in answered if code.startswith("5")], answered


def _conforms(resp: httpx.Response, path: str, method: str) -> httpx.Response:
    """The answer's status is documented for the operation and its body matches it."""
    operation = schema[path][method]
    assert operation.responses.find_by_status_code(resp.status_code) is not None, (
        path, method, resp.status_code, resp.text)
    operation.validate_response(resp)
    return resp


def test_the_operator_session_answers_match_the_description(live: _LiveBackend,
                                                            live_url: str) -> None:
    """What generated cases cannot reach: a login with the right token, and the page and its
    actions under the session cookie (the CSRF field refused when missing, then a redirect)."""
    with httpx.Client(base_url=live_url, timeout=20, follow_redirects=False) as browser:
        resp = _conforms(browser.post("/status/login", data={"token": OPERATOR_TOKEN}),
                         "/status/login", "POST")
        assert resp.status_code == 303 and resp.headers["location"] == "/status"
        page = _conforms(browser.get("/status"), "/status", "GET")
        assert page.status_code == 200
        _conforms(browser.get("/status.json", params={"events": "1"}), "/status.json", "GET")
        csrf = re.search(r'name="_csrf" value="([0-9a-f]{64})"', page.text)
        assert csrf is not None
        form = {"account_id": "acct_1", "mode": "live"}
        assert _conforms(browser.post("/status/resume", data=form), "/status/resume",
                         "POST").status_code == 403
        resp = _conforms(browser.post("/status/resume", data={**form, "_csrf": csrf[1]}),
                         "/status/resume", "POST")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/status?")
        resp = _conforms(browser.post("/status/logout", data={"_csrf": csrf[1]}),
                         "/status/logout", "POST")
        assert resp.status_code == 303 and resp.headers["location"] == "/status/login"


def test_features_off_and_writes_refused_match_the_description(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The 503 answers: the vault and the status page off (no `CREDENTIALS_KEYS`, no
    `OPERATOR_TOKEN`), and `/healthz` degraded while the database refuses writes (full)."""
    # one database thread: SQLite's max_page_count holds per connection
    env = base_env(tmp_path_factory.mktemp("openapi-off"), SCHEDULER="off", DB_WORKERS="1")
    with _LiveBackend(env) as off, httpx.Client(
            base_url=f"http://127.0.0.1:{off.backend.port}", timeout=20) as client:
        raw = json.dumps({"user_id": "usr_1", "account_id": "acct_1"})
        for i, path in enumerate(("/api/credentials/list", "/api/oauth/{provider}/exchange")):
            # a signature per request, as the extension makes: these accept each one once
            header = sign(raw, APP_SECRET, int(time.time()) - i)
            resp = client.post(path.replace("{provider}", "acme"), content=raw, headers={
                "Stripe-Signature": header, "Content-Type": "application/json"})
            assert _conforms(resp, path, "POST").status_code == 503
            assert resp.json()["error"]["code"] == "not_configured"
            assert resp.headers["access-control-allow-origin"] == "*"
        for path, method in (("/status", "GET"), ("/status.json", "GET"),
                             ("/status/login", "GET"), ("/status/login", "POST"),
                             ("/status/doctor", "POST")):
            resp = client.request(method, path, headers={
                "Authorization": f"Bearer {OPERATOR_TOKEN}"})
            assert _conforms(resp, path, method).status_code == 503, path

        storage = off.backend.storage
        db = storage.db

        async def fill() -> None:
            pages = await storage.run(
                lambda: db.execute_sql("PRAGMA page_count").fetchone()[0])
            await storage.run(db.pragma, "max_page_count", pages, permanent=True)

        off.run(fill())
        big = json.dumps(make_event("customer.created", "acct_1", True,
                                    obj={"id": "cus_1", "description": "x" * 200_000}))
        assert client.post("/webhooks", content=big, headers={
            "Stripe-Signature": sign(big, WH_LIVE),
            "Content-Type": "application/json"}).status_code == 503
        resp = _conforms(client.get("/healthz"), "/healthz", "GET")
        assert resp.status_code == 503 and resp.json()["status"] == "degraded"
        assert resp.json()["database"]["writable"] is False
