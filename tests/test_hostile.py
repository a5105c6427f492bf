"""Hostile input over HTTP (issue 13, sections 1, 2, 3 and 5): every request here is one an
attacker can send without a secret (or a body Stripe would never sign); each must answer a 4xx
JSON error, never a 500, and log one bounded line without a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Iterator

import pytest
from conftest import APP_SECRET, base_env, compact, event, running, sign

from models.installation import apply_state
from service.jsonbody import MAX_JSON_DEPTH
from service.logs import MAX_LINE, setup_logging

IDS = {"user_id": "usr_1", "account_id": "acct_1"}
IDS_JSON = '"user_id":"usr_1","account_id":"acct_1"'


async def install(app, account="acct_1", mode="live"):
    view, _ = await app.backend.storage.run(apply_state, account, mode, True, int(time.time()),
                                            "test")
    app.backend.installations.put(view)


@contextlib.contextmanager
def captured_log(fmt: str = "text") -> Iterator[io.StringIO]:
    """The service's own log set-up (service/logs.py), writing into a string."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging(fmt, "info", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def assert_json_error(resp, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert set(resp.json()["error"]) == {"code", "message"}


# ---- 1. bodies JSON.stringify could never write ------------------------------------------------

@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999",
                                   "[1, NaN]", '{"a": Infinity}'])
@pytest.mark.gen_test(timeout=30)
async def test_non_finite_numbers_are_malformed_whatever_the_signature(tmp_path, value):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        raw = '{"n":' + value + "," + IDS_JSON + "}"
        # signed over the body itself, and over what the re-serialiser used to make of it
        for signed_over in (raw, '{"n":null,' + IDS_JSON + "}"):
            resp = await app.signed("/api/whoami", raw, header=sign(signed_over, APP_SECRET))
            assert_json_error(resp, 400)
            assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.gen_test(timeout=30)
async def test_duplicate_keys_are_malformed(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        for raw in ('{"n":1,"n":2,' + IDS_JSON + "}",
                    '{"user_id":"usr_1",' + IDS_JSON + "}",
                    '{"o":{"a":1,"a":1},' + IDS_JSON + "}"):
            assert_json_error(await app.signed("/api/whoami", raw), 400)
        # the same key in two different objects is fine
        raw = '{"a":{"k":1},"b":{"k":2},' + IDS_JSON + "}"
        assert (await app.signed("/api/whoami", raw)).status_code == 200


# ---- 2. no 500, no traceback ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_non_ascii_signature_header(tmp_path):
    async with running(base_env(tmp_path)) as app:
        header = f"t={int(time.time())},v1=é".encode()
        with captured_log() as log:
            resp = await app.client.post("/api/whoami", content=compact(IDS).encode(),
                                         headers={"Stripe-Signature": header})
            assert_json_error(resp, 401)
            resp = await app.client.post("/webhooks", content=compact(event("x.y")).encode(),
                                         headers={"Stripe-Signature": header})
            assert_json_error(resp, 400)
        assert "Traceback" not in log.getvalue()


@pytest.mark.parametrize("depth", [600, 10_000])
@pytest.mark.gen_test(timeout=30)
async def test_deeply_nested_bodies(tmp_path, depth):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        raw = '{"x":' + "[" * depth + "]" * depth + "," + IDS_JSON + "}"
        with captured_log() as log:
            for header in (sign(raw, APP_SECRET), sign("{}", APP_SECRET)):
                assert_json_error(await app.signed("/api/whoami", raw, header=header), 400)
            # a signed webhook too (only a holder of the secret can send it, still no 500)
            ev = compact(event("customer.created"))[:-1] + ',"deep":' + raw + "}"
            assert_json_error(await app.webhook(ev), 400)
        assert "Traceback" not in log.getvalue()


@pytest.mark.gen_test(timeout=30)
async def test_depth_limit_boundary(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)

        def body(depth: int) -> str:  # the top-level object is level 1
            inner = depth - 1
            return '{"x":' + "[" * inner + "]" * inner + "," + IDS_JSON + "}"

        assert (await app.signed("/api/whoami", body(MAX_JSON_DEPTH))).status_code == 200
        assert_json_error(await app.signed("/api/whoami", body(MAX_JSON_DEPTH + 1)), 400)
        # brackets inside strings are text, not depth
        raw = '{"x":"' + "[" * 5000 + '",' + IDS_JSON + "}"
        assert (await app.signed("/api/whoami", raw)).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_lone_surrogates(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        raw = '{"note":"\\ud800","\\udc00":1,' + IDS_JSON + "}"
        assert_json_error(await app.signed("/api/whoami", raw, header=sign("{}", APP_SECRET)),
                          401)
        # JSON.stringify writes a lone surrogate as a \u escape: a body signed so verifies, and
        # its fields can be echoed back
        resp = await app.signed("/api/whoami", raw)
        assert resp.status_code == 200, resp.text
        assert "\udc00" in resp.json()["signed_fields"]
        # signed over JSON.stringify's form, sent pretty-printed
        pretty = '{\n  "note": "\\ud800",\n  "\\udc00": 1,\n  "user_id": "usr_1",\n' \
                 '  "account_id": "acct_1"\n}'
        resp = await app.signed("/api/whoami", pretty, header=sign(raw, APP_SECRET))
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("created", [10**30, 2**63, -1, "1", 1.5, None])
@pytest.mark.gen_test(timeout=30)
async def test_webhook_fields_the_database_cannot_hold_answer_400(tmp_path, created):
    async with running(base_env(tmp_path)) as app:
        ev = event("customer.created")
        ev["created"] = created
        assert_json_error(await app.webhook(ev), 400)


@pytest.mark.gen_test(timeout=30)
async def test_webhook_strings_the_database_cannot_hold_answer_400(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for field, value in (("type", "a\u0000b"), ("type", "x" * 256),
                             ("account", "acct_" + "1" * 300), ("account", "acct_1\u0000"),
                             ("data", [None])):
            ev = event("customer.created")
            ev[field] = value
            assert_json_error(await app.webhook(ev), 400)
        assert (await app.webhook(event("customer.created"))).status_code == 200


@pytest.mark.gen_test(timeout=30)
async def test_query_values_cannot_forge_log_lines(tmp_path):
    async with running(base_env(tmp_path)) as app:
        with captured_log() as log:
            resp = await app.client.get(
                "/callback/stripe?error=access_denied%0AFORGED%0D%0Aalso&error_description=x")
            assert resp.status_code == 400
            resp = await app.client.get("/nowhere%0AFORGED")
            assert resp.status_code == 404
        lines = log.getvalue().splitlines()
        assert lines and not any(line.startswith(("FORGED", "also")) for line in lines)
        assert any("access_denied\\nFORGED" in line for line in lines)


@pytest.mark.gen_test(timeout=60)
async def test_hostile_requests_grow_the_log_by_a_bounded_amount(tmp_path):
    async with running(base_env(tmp_path)) as app:
        # 1.2 KB, the measured case (600 nested arrays, a wrong signature)
        raw = '{"x":' + "[" * 580 + "]" * 580 + "," + IDS_JSON + "}"
        header = sign("{}", APP_SECRET)
        with captured_log() as log:
            for _ in range(30):
                batch = [app.signed("/api/whoami", raw, header=header) for _ in range(10)]
                for resp in await asyncio.gather(*batch):
                    assert resp.status_code == 400
        text = log.getvalue()
        assert "Traceback" not in text
        assert len(text) <= 300 * (MAX_LINE + 1)
        assert len(text) < 300 * 400  # one short line each, in fact


def test_log_lines_are_one_bounded_line(capsys):
    for fmt in ("text", "json"):
        with captured_log(fmt) as log:
            logger = logging.getLogger("app.test")
            logger.warning("value %s", "a\nb\rc\x1b[31m\u2028" + "x" * 10_000)
            try:
                raise ValueError("boom\n" * 1000)
            except ValueError:
                logger.exception("a server bug")
        lines = log.getvalue().splitlines()
        assert len(lines) == 2, (fmt, lines[:3])
        assert all(len(line) <= MAX_LINE for line in lines)
        assert "ValueError" in lines[1]  # the traceback's end survives the cut


# ---- 3. bounded metrics -----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=120)
async def test_invented_methods_do_not_grow_metrics(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for method in ("GET", "FOO"):
            await app.client.request(method, "/healthz")
            await app.client.request(method, "/no/such/path")
        await app.client.get("/metrics")
        before = (await app.client.get("/metrics")).text
        for start in range(0, 2000, 50):
            batch = [app.client.request(f"M{i}", "/healthz" if i % 2 else f"/x{i}")
                     for i in range(start, start + 50)]
            for resp in await asyncio.gather(*batch):
                assert resp.status_code in (404, 405)
        after = (await app.client.get("/metrics")).text
        series = [line for line in after.splitlines() if line.startswith("http_requests_total")]
        assert len(series) == len([line for line in before.splitlines()
                                   if line.startswith("http_requests_total")])
        assert any('method="other"' in line for line in series)
        assert len(after) < len(before) + 2000


# ---- 5. unknown /api paths keep CORS ----------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_unknown_api_path_answers_404_with_cors(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for method in ("POST", "GET", "DELETE"):
            resp = await app.client.request(method, "/api/nope", content=compact(IDS).encode())
            assert_json_error(resp, 404)
            assert resp.headers["access-control-allow-origin"] == "*"
        resp = await app.client.options("/api/nope/deeper", headers={
            "Origin": "null", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "stripe-signature, content-type"})
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == "*"
        assert "POST" in resp.headers["access-control-allow-methods"]
        # outside /api, still a plain 404 without CORS
        resp = await app.client.post("/nope")
        assert_json_error(resp, 404)
        assert "access-control-allow-origin" not in resp.headers


# ---- found by schemathesis (tests/test_openapi.py) ---------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_405_lists_the_allowed_methods_and_healthz_answers_head(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for method, path, allow in (("TRACE", "/healthz", "GET, HEAD"),
                                    ("GET", "/webhooks", "POST"),
                                    ("PUT", "/api/whoami", "POST, OPTIONS")):
            resp = await app.client.request(method, path)
            assert_json_error(resp, 405)
            assert resp.headers["allow"] == allow
        resp = await app.client.head("/healthz")
        assert resp.status_code == 200 and resp.content == b""
