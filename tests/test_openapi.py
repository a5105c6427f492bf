"""The whole HTTP surface against its description (issue 13, section 2): schemathesis generates
requests from `docs/openapi.yaml`, valid and invalid (its positive and negative modes, and its
examples and coverage phases), and sends them to a real backend on loopback. No answer may be a
5xx, and every answer must match the description: status, content type, headers and body.

Half of the generated `/api/...` bodies (chosen by the body, not by chance) are signed as the
UI extension's would be, so that the endpoints' success paths are described and checked too;
the account `acct_1` is installed in live mode. A webhook is valid data only when Stripe signed
it, and no header value is valid without the secret: every webhook otherwise valid is signed,
and half of the others. Half of the install callbacks without `error` carry a valid
`install_signature` (and, with a `state`, a state issued to their install cookie), so that the
callback's success answers are checked too.

schemathesis's check that valid data is not refused (`positive_data_acceptance`) runs on every
operation but the `/status` requests without the operator's token. Two valid requests answer
400 by design, as the description says, and for those alone the test checks the exact answer
instead: a callback holding `error` (the user cancelled: always 400 `install_cancelled`) and a
signed OAuth exchange whose code the provider refuses (400 `oauth_refused`). The field
shapes of those two Stripe-only operations are also compared with the code's own patterns
directly (generated cases rarely reach a length limit).

Every feature is on: the credentials vault (`CREDENTIALS_KEYS`), an OAuth provider `acme` whose
token endpoint is served on loopback, the registry's tasks (queued only: `TASK_CONCURRENCY=0`),
and the status page (`OPERATOR_TOKEN`): half of the `/status` requests (chosen the same way)
carry the operator's bearer token, as an explicit credential, so that schemathesis also checks
that the pages refuse a request without it or with a wrong one. Example counts:
docs/reliability.md.
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
import jsonschema_rs
import pytest
import schemathesis
import tornado.web
import yaml
from conftest import (
    APP_SECRET,
    ROOT,
    WH_LIVE,
    WH_TEST,
    base_env,
    free_port,
    make_event,
    sign,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.meta import REQUEST_SHAPE_PROBES, coverage_scenario
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from jobs.oauth import OAuthProvider, OAuthProviders
from models.installation import apply_state
from models.tasks import enqueue
from service.config import Config
from service.ids import ACCOUNT_ID, EVENT_ID, USER_ID
from service.install import _PARAM, COOKIE
from service.server import Backend
from service.signatures import canonical_identity, extension_signed_string, install_signed_string
from service.state_token import StateTokens
from service.throttle import LoginThrottle
from service.webhooks import EVENT_TYPE

#: Generated cases per operation and phase (kept modest: the suite stays fast).
MAX_EXAMPLES = 15
#: The same for the two operations only Stripe calls.
STRIPE_EXAMPLES = 50
OPERATOR_TOKEN = "oas-Wm3Kq8Zt1Rx6Lb9Hv4Nd7Cp2Gf5Js0Ye"  # random-looking: 32+ characters
#: A fixed Fernet key (32 bytes, URL-safe base64): the vault is on.
CREDENTIALS_KEY = "b3BlbmFwaS10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE="
#: The code the loopback OAuth provider accepts (the description's example sends it).
GOOD_CODE = "good-code"
TASK_ID = re.compile(r"task_[0-9a-f]{32}")
#: A log-in throttle that never holds anyone up (the fuzzed cases; throttling has its test).
UNTHROTTLED = LoginThrottle(per_client=(10**9, 1.0), overall=(10**9, 1.0))

schema = schemathesis.openapi.from_path(
    os.path.join(ROOT, "docs", "openapi.yaml"),
    config=schemathesis.config.SchemathesisConfig.from_dict({
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "mode": "all"},
        # What only Stripe sends, and only signed: more cases, so that any difference between
        # the description and the code is found (about 1 ms each).
        "operations": [{"include-path": path, "generation": {"max-examples": STRIPE_EXAMPLES}}
                       for path in ("/webhooks", "/callback/stripe")],
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

    def answered(self, handler: str | None = None) -> dict[str, int]:
        """Requests answered so far (by `handler`, or by all), by status code."""
        counts: dict[str, int] = {}
        for metric in self.backend.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and handler in (None,
                                                                  sample.labels["handler"]):
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
        # generated cases send wrong operator tokens: throttled, the right one half of them
        # carry would be refused too (429), and the pages' answers would go untested
        backend.backend.app.settings["login_throttle"] = UNTHROTTLED
        yield backend


@pytest.fixture(scope="module")
def live_url(live: _LiveBackend) -> str:
    return f"http://127.0.0.1:{live.backend.port}"


def _checksum(value: object) -> int:
    return zlib.crc32(repr(value).encode("utf-8", "backslashreplace"))


def _sign_like_stripe(case: Any, task_id: str) -> bool:
    """Sign the case's body as Stripe would (for the extension, or a webhook); True when it did.
    Signed: every webhook that is valid data but for its signature (only Stripe can make a
    valid one), and about half of the other bodies (chosen by a checksum of the body). A test
    event is signed with the test secret or the live one (both are Stripe's ways), a live one
    with the live secret. A signed task status request asks for `task_id` (a task that exists)
    instead of the well-formed one generated."""
    body = case.body
    if "Stripe-Signature" not in (case.headers or {}):
        return False  # a case that leaves the header out on purpose
    if case.method != "POST" or not isinstance(body, dict):
        return False
    meta = case.meta
    valid = meta is not None and meta.generation.mode.is_positive
    if _checksum(body) % 2 and not (case.path == "/webhooks" and valid):
        return False  # the generated Stripe-Signature stays
    try:
        if case.path == "/webhooks":
            signed = json.dumps(body)
            secret = WH_TEST if body.get("livemode") is False and _checksum(body) % 4 < 2 \
                else WH_LIVE
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


def _sign_install(case: Any) -> bool:
    """Give about half of the install callbacks without `error` (chosen by a checksum of the
    query) a valid `install_signature`, as Stripe's redirect would carry; True when it did.
    With a `state`, the state is replaced by one issued to the case's install cookie (its own,
    or a new one), as `GET /install` would have."""
    query = case.query or {}
    user_id, account_id = query.get("user_id"), query.get("account_id")
    if (case.path != "/callback/stripe" or case.method != "GET" or "error" in query
            or not isinstance(user_id, str)
            or not isinstance(account_id, str) or _checksum(sorted(query.items())) % 2):
        return False
    if "state" in query:
        browser = (case.cookies or {}).get(COOKIE)
        if not isinstance(browser, str):
            browser = f"browser-{_checksum(sorted(query.items()))}"
            case.cookies = {**(case.cookies or {}), COOKIE: browser}
        state = StateTokens([APP_SECRET]).issue(browser)
        signed = install_signed_string(state, user_id, account_id)
        query = {**query, "state": state}
    else:  # an install started in the App Marketplace
        signed = canonical_identity(user_id, account_id)
    case.query = {**query, "install_signature": sign(signed, APP_SECRET)}
    return True


def _refused_by_design(case: Any, signed: bool) -> str | None:
    """The error code of the one 400 the description gives this request although it is valid
    data, if it has one: a callback holding `error` (the user cancelled at Stripe), and a
    signed exchange naming a redirect URI the provider does not declare, or of a code the
    provider refuses. None for schemathesis's
    request-shape probes (an undeclared method or content type), which only check for 5xx."""
    if coverage_scenario(case) in REQUEST_SHAPE_PROBES:
        return None
    if (case.path == "/callback/stripe" and case.method == "GET"
            and isinstance((case.query or {}).get("error"), str)):
        return "install_cancelled"  # given once (twice is a malformed request)
    if (case.path == "/api/oauth/{provider}/exchange" and signed
            and case.path_parameters.get("provider") == "acme"):
        if "redirect_uri" in case.body:  # `acme` declares no redirect URI: none is allowed
            return "bad_redirect_uri"
        if case.body.get("code") != GOOD_CODE:
            return "oauth_refused"
    return None


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
    signed = _sign_like_stripe(case, live.task_id) or _sign_install(case)
    headers = _operator_headers(case)
    excluded = []
    by_design = _refused_by_design(case, signed)
    if by_design is not None:
        excluded.append(positive_data_acceptance)  # checked below instead, with its exception
    if case.path.startswith("/status") and headers is None:
        # Without the token the answer is 303 or 401 before the input is read, by design.
        excluded += [positive_data_acceptance, negative_data_rejection]
    resp = case.call_and_validate(base_url=live_url, timeout=20, excluded_checks=excluded,
                                  headers=headers)
    if by_design == "install_cancelled":  # whatever else the request holds
        assert resp.status_code == 400, (resp.status_code, resp.text)
        if "text/html" not in case.headers.get("Accept", ""):
            assert resp.json()["error"]["code"] == by_design, resp.text
    elif by_design is not None:
        if resp.status_code == 400 and case.meta.generation.mode.is_positive:
            assert resp.json()["error"]["code"] == by_design, resp.text
        else:
            case.validate_response(resp, checks=[positive_data_acceptance])


def test_the_run_reached_every_kind_of_answer(live: _LiveBackend) -> None:
    """After the generated cases (this test runs after them, in file order): the server, not
    only the client, saw many requests, a fair share of them signed successes (webhooks stored
    and callbacks installed among them), and no 5xx."""
    answered = live.answered()
    if not answered:
        pytest.skip("selected without the generated cases")
    assert sum(answered.values()) >= 300, answered
    assert answered.get("200", 0) >= 10, answered
    assert not [code for code in answered if code.startswith("5")], answered
    webhooks = live.answered("WebhookHandler")
    assert webhooks.get("200", 0) >= 3 and webhooks.get("400", 0) >= 10, webhooks
    callbacks = live.answered("CallbackHandler")
    assert callbacks.get("200", 0) >= 5 and callbacks.get("400", 0) >= 10, callbacks
    assert callbacks.get("401", 0) >= 3, callbacks


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


def test_throttled_log_ins_match_the_description(live: _LiveBackend, live_url: str) -> None:
    """Too many wrong tokens: the form's 429 (a page) and a bearer request's (JSON), each with
    `Retry-After`."""
    settings = live.backend.app.settings
    settings["login_throttle"] = LoginThrottle(per_client=(1, 3600.0))
    try:
        with httpx.Client(base_url=live_url, timeout=20, follow_redirects=False) as client:
            assert _conforms(client.post("/status/login", data={"token": "wrong"}),
                             "/status/login", "POST").status_code == 401
            resp = _conforms(client.post("/status/login", data={"token": OPERATOR_TOKEN}),
                             "/status/login", "POST")
            assert resp.status_code == 429 and resp.headers["retry-after"] == "3600"
            for path in ("/status", "/status.json"):
                resp = _conforms(client.get(path, headers={
                    "Authorization": f"Bearer {OPERATOR_TOKEN}"}), path, "GET")
                assert resp.status_code == 429, path
    finally:
        settings["login_throttle"] = UNTHROTTLED


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


def _resolved(node: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        document_part: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            document_part = document_part[part]
        node = document_part
    return node


def _field_schemas() -> list[tuple[str, dict[str, Any], re.Pattern[str]]]:
    """(where, the description's schema, the code's pattern) for each string field of the
    Stripe-only operations and of every signed body."""
    with open(os.path.join(ROOT, "docs", "openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    callback = {p["name"]: p["schema"] for p in doc["paths"]["/callback/stripe"]["get"][
        "parameters"]}
    event = doc["paths"]["/webhooks"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]
    signed = doc["components"]["schemas"]["SignedBody"]["properties"]
    pairs = [("callback state", callback["state"], _PARAM["state"]),
             ("callback user_id", callback["user_id"], USER_ID),
             ("callback account_id", callback["account_id"], ACCOUNT_ID),
             ("callback install_signature", callback["install_signature"],
              _PARAM["install_signature"]),
             ("event id", event["id"], EVENT_ID), ("event type", event["type"], EVENT_TYPE),
             ("event account", event["account"], ACCOUNT_ID),
             ("signed user_id", signed["user_id"], USER_ID),
             ("signed account_id", signed["account_id"], ACCOUNT_ID)]
    return [(where, _resolved(schema, doc), code) for where, schema, code in pairs]


FIELDS = _field_schemas()
_ALPHABET = [chr(c) for c in range(0x20, 0x7f)] + ["\t", "\n", "\x7f", "é", "\u2028", "😀"]


@pytest.mark.parametrize("where,described,code", FIELDS, ids=[f[0] for f in FIELDS])
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_field_accepts_what_the_code_accepts(where: str, described: dict[str, Any],
                                                  code: re.Pattern[str],
                                                  data: st.DataObject) -> None:
    """The description's pattern and length limits accept exactly the strings the code's
    pattern accepts: strings either would accept (and arbitrary text), each also with its last
    character replaced by every printable ASCII character (and a few others), and stretched to
    the length limits and one past them."""
    schema = {k: v for k, v in described.items() if k in ("type", "pattern", "minLength",
                                                          "maxLength")}
    valid = jsonschema_rs.validator_for(schema).is_valid
    text = data.draw(st.one_of(st.from_regex(code, fullmatch=True),
                               st.from_regex(described["pattern"]), st.text(max_size=20)))
    low, high = schema.get("minLength", 0), schema["maxLength"]
    candidates = [text]
    if text:
        candidates += [text[:-1] + c for c in _ALPHABET]
        candidates += [text[:n] for n in (low - 1, low) if n >= 0]
        candidates += [text + text[-1] * (n - len(text)) for n in (high, high + 1)
                       if n > len(text)]
    for value in candidates:
        assert valid(value) == bool(code.fullmatch(value)), (where, value[:80], len(value))
