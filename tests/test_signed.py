"""Signed extension requests: verification, rotation, roles, CORS (issue 3).

Every signature here is made by the `stripe` library over the exact string the UI extension's
`fetchStripeSignature()` signs."""

from __future__ import annotations

import json
import time

import pytest
from conftest import APP_SECRET, APP_SECRET_2, base_env, compact, running, sign, sign_many

from models.installation import apply_state
from service.signed import SignedHandler, SignedRequest

IDS = {"user_id": "usr_1", "account_id": "acct_1"}


async def install(app, account="acct_1", mode="live"):
    view, _ = await app.backend.storage.run(apply_state, account, mode, True, int(time.time()),
                                            "test")
    app.backend.installations.put(view)


@pytest.mark.gen_test(timeout=30)
async def test_default_payload_is_accepted(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.signed("/api/installation", IDS)
        assert resp.status_code == 200
        nothing = {"active": False, "since": None, "context": None}
        assert resp.json() == {"account_id": "acct_1", "live": nothing, "test": nothing,
                               "sandbox": nothing}
        assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.gen_test(timeout=30)
async def test_additional_payload_as_javascript_sends_it(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        # JSON.stringify({...payload, user_id, account_id}): payload keys first, compact,
        # non-ASCII as is, 1.5 and 100 as written, booleans.
        raw = ('{"note":"Grüße, 日本 — ok","price":1.5,"count":100,"whole":1,"flag":true,'
               '"neg":-0.25,"user_id":"usr_1","account_id":"acct_1"}')
        resp = await app.signed("/api/whoami", raw.encode("utf-8"))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["signed_fields"] == sorted(json.loads(raw))
        # the same object re-serialised by Python's default json.dumps would not verify as is,
        # but its JavaScript form still does: all fields remain covered
        pretty = json.dumps(json.loads(raw), indent=2)
        resp = await app.signed("/api/whoami", pretty.encode(), header=sign(raw, APP_SECRET))
        assert resp.status_code == 200
        assert resp.json()["signed_fields"] == sorted(json.loads(raw))


@pytest.mark.gen_test(timeout=30)
async def test_canonical_fallback_covers_only_the_ids(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        raw = compact({"amount": 999, **IDS})
        header = sign(compact(IDS), APP_SECRET)  # signed without the payload
        resp = await app.signed("/api/whoami", raw, header=header)
        assert resp.status_code == 200
        assert resp.json()["signed_fields"] == ["account_id", "user_id"]


@pytest.mark.gen_test(timeout=30)
async def test_stripe_roles_are_exposed(tmp_path):
    async with running(base_env(tmp_path)) as app:
        await install(app)
        raw = compact({"stripe_roles": ["admin", "developer"], **IDS})
        resp = await app.signed("/api/whoami", raw)
        assert resp.status_code == 200
        assert resp.json()["roles"] == ["admin", "developer"]
        bad = compact({"stripe_roles": "admin", **IDS})
        assert (await app.signed("/api/whoami", bad)).status_code == 400


@pytest.mark.gen_test(timeout=30)
async def test_secret_rotation(tmp_path):
    env = base_env(tmp_path, STRIPE_APP_SECRETS=f"{APP_SECRET},{APP_SECRET_2}")
    async with running(env) as app:
        raw = compact(IDS)
        for header in (sign(raw, APP_SECRET), sign(raw, APP_SECRET_2),
                       sign_many(raw, [APP_SECRET, APP_SECRET_2]),
                       sign_many(raw, ["absec_" + "z" * 30, APP_SECRET_2])):
            resp = await app.signed("/api/installation", raw, header=header)
            assert resp.status_code == 200, header
    # once rotated out, the old secret no longer works
    async with running(base_env(tmp_path, STRIPE_APP_SECRETS=APP_SECRET_2)) as app:
        resp = await app.signed("/api/installation", compact(IDS), secret=APP_SECRET)
        assert resp.status_code == 401


@pytest.mark.gen_test(timeout=30)
async def test_extra_v0_scheme_is_ignored(tmp_path):
    async with running(base_env(tmp_path)) as app:
        raw = compact(IDS)
        header = sign(raw, APP_SECRET) + ",v0=" + "0" * 64
        assert (await app.signed("/api/installation", raw, header=header)).status_code == 200
        only_v0 = header.split(",")[0] + ",v0=" + "0" * 64
        assert (await app.signed("/api/installation", raw, header=only_v0)).status_code == 401


@pytest.mark.gen_test(timeout=30)
async def test_timestamps_outside_tolerance_both_ways(tmp_path):
    async with running(base_env(tmp_path, SIGNATURE_TOLERANCE="300")) as app:
        raw = compact(IDS)
        now = int(time.time())
        for ts, ok in ((now - 290, True), (now + 290, True), (now - 400, False),
                       (now + 400, False), (now + 86400 * 365, False)):
            resp = await app.signed("/api/installation", raw, header=sign(raw, APP_SECRET, ts))
            assert resp.status_code == (200 if ok else 401), (ts - now, resp.text)
            if not ok:
                assert resp.json()["error"]["code"] == "bad_signature"


@pytest.mark.gen_test(timeout=30)
async def test_tampering_and_bad_signatures_are_401(tmp_path):
    async with running(base_env(tmp_path)) as app:
        raw = compact(IDS)
        header = sign(raw, APP_SECRET)
        tampered = compact({"user_id": "usr_1", "account_id": "acct_2"})
        cases = [
            (tampered, header),  # another account
            (compact({"account_id": "acct_1", "user_id": "usr_1"}),  # swapped order
             sign(compact({"account_id": "acct_1", "user_id": "usr_1"}), APP_SECRET_2)),
            (raw, sign(raw, APP_SECRET_2)),  # unknown secret
            (raw, ""),  # empty header
            (raw, "garbage"),
            (raw, "t=abc,v1=zz"),
            (raw, "v1=" + "a" * 64),
        ]
        for body, hdr in cases:
            resp = await app.signed("/api/installation", body, header=hdr)
            assert resp.status_code == 401, (body, hdr)
            assert resp.json()["error"]["code"] == "bad_signature"
            assert resp.headers["access-control-allow-origin"] == "*"
        resp = await app.client.post("/api/installation", content=raw)  # no header at all
        assert resp.status_code == 401


@pytest.mark.gen_test(timeout=30)
async def test_swapped_key_order_signed_as_sent_is_checked_against_canonical(tmp_path):
    async with running(base_env(tmp_path)) as app:
        swapped = compact({"account_id": "acct_1", "user_id": "usr_1"})
        # an extension always signs user_id first; a body in the other order still verifies
        # against the canonical string, and a signature over the swapped string does not
        assert (await app.signed("/api/installation", swapped,
                                 header=sign(compact(IDS), APP_SECRET))).status_code == 200
        assert (await app.signed("/api/installation", swapped,
                                 header=sign(swapped, APP_SECRET))).status_code == 200
        fake = compact({"account_id": "acct_1", "user_id": "usr_2"})
        assert (await app.signed("/api/installation", fake,
                                 header=sign(compact(IDS), APP_SECRET))).status_code == 401


@pytest.mark.gen_test(timeout=30)
async def test_malformed_bodies_are_400(tmp_path):
    async with running(base_env(tmp_path)) as app:
        for body in (b"", b"not json", b"[1,2]", b'"s"', b"null",
                     compact({"user_id": "usr_1"}).encode(),
                     compact({"user_id": 5, "account_id": "acct_1"}).encode(),
                     compact({"user_id": "usr_1", "account_id": "cus_1"}).encode(),
                     b"\xff\xfe{}"):
            resp = await app.client.post("/api/installation", content=body,
                                         headers={"Stripe-Signature": sign(b"x", APP_SECRET)})
            assert resp.status_code == 400, body
            assert resp.json()["error"]["code"] == "bad_request"
            assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.gen_test(timeout=30)
async def test_oversized_body_is_413_with_cors(tmp_path):
    async with running(base_env(tmp_path, MAX_BODY_SIZE="4096")) as app:
        raw = compact({"blob": "x" * 5000, **IDS})
        resp = await app.signed("/api/installation", raw)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "body_too_large"
        assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.gen_test(timeout=30)
async def test_uninstalled_account_is_403_where_installation_is_needed(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.signed("/api/jobs", IDS)
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "not_installed"
        assert resp.headers["access-control-allow-origin"] == "*"
        await install(app, mode="test")
        assert (await app.signed("/api/jobs", IDS)).status_code == 200
        view, _ = await app.backend.storage.run(apply_state, "acct_1", "test", False,
                                                int(time.time()) + 1, "test")
        app.backend.installations.put(view)
        assert (await app.signed("/api/jobs", IDS)).status_code == 403


@pytest.mark.gen_test(timeout=30)
async def test_503_without_app_secret(tmp_path):
    async with running(base_env(tmp_path, STRIPE_APP_SECRETS="")) as app:
        resp = await app.signed("/api/installation", IDS)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "not_configured"
        assert "absec" not in resp.text


@pytest.mark.gen_test(timeout=30)
async def test_cors_preflight_and_no_cors_elsewhere(tmp_path):
    async with running(base_env(tmp_path)) as app:
        resp = await app.client.options("/api/jobs", headers={
            "Origin": "null", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "stripe-signature, content-type"})
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == "*"
        assert "POST" in resp.headers["access-control-allow-methods"]
        assert resp.headers["access-control-allow-headers"] == "Stripe-Signature, Content-Type"
        assert int(resp.headers["access-control-max-age"]) > 0
        for method, path in (("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/webhooks"),
                             ("GET", "/install"), ("OPTIONS", "/webhooks"),
                             ("GET", "/callback/stripe"), ("GET", "/nope")):
            resp = await app.client.request(method, path, headers={"Origin": "null"})
            assert "access-control-allow-origin" not in resp.headers, (method, path)


@pytest.mark.gen_test(timeout=30)
async def test_log_says_why_without_the_secret(tmp_path, caplog):
    async with running(base_env(tmp_path)) as app:
        raw = compact(IDS)
        old = int(time.time()) - 1000
        await app.signed("/api/installation", raw, header=sign(raw, APP_SECRET, old))
    text = caplog.text
    assert "more than 300s old" in text
    assert APP_SECRET not in text


@pytest.mark.parametrize("value,javascript", [
    (1.5, "1.5"), (100, "100"), (1.0, "1"), (-0.25, "-0.25"), (0.1, "0.1"),
    (1e21, "1e+21"), (1.5e22, "1.5e+22"), (1e16, "10000000000000000"),
    (0.000015, "0.000015"), (-0.000001, "-0.000001"), (1e-7, "1e-7"), (1.25e-8, "1.25e-8"),
    (True, "true"), (False, "false"), (None, "null"),
    ("Grüße 日本", '"Grüße 日本"'), ('q"\\\n\t\x01', '"q\\"\\\\\\n\\t\\u0001"'),
    ({"b": 1, "a": [1, "x"]}, '{"b":1,"a":[1,"x"]}'),
])
def test_js_stringify_matches_javascript(value, javascript):
    # Expected values are what JSON.stringify(value) returns in JavaScript.
    from service.signatures import js_stringify

    assert js_stringify(value) == javascript


class AmountHandler(SignedHandler):
    """An app developer's endpoint that needs `amount` to be covered by the signature."""

    requires_installation = False

    async def handle(self, req: SignedRequest) -> dict:
        return {"amount": req.signed("amount")}


@pytest.mark.gen_test(timeout=30)
async def test_a_handler_can_require_a_field_to_be_signed(tmp_path):
    async with running(base_env(tmp_path),
                       extra_routes=[(r"/api/amount", AmountHandler)]) as app:
        raw = compact({"amount": 42, **IDS})
        ok = await app.signed("/api/amount", raw)
        assert ok.status_code == 200 and ok.json() == {"amount": 42}
        only_ids = await app.signed("/api/amount", raw, header=sign(compact(IDS), APP_SECRET))
        assert only_ids.status_code == 401
        assert "not covered by the signature" in only_ids.json()["error"]["message"]
        assert only_ids.headers["access-control-allow-origin"] == "*"


# ---- why a signature check fails: one SignatureError subclass per reason ----------------------

T0 = 1_700_000_000  # a fixed clock: `verify(now=...)` makes these independent of the time of day
PAYLOAD = compact(IDS)


def _reason(payload, header, secrets=(APP_SECRET,), now=T0, tolerance=300):
    from service.signatures import SignatureError, verify

    with pytest.raises(SignatureError) as caught:
        verify(payload, header, list(secrets), tolerance, now=now)
    return type(caught.value)


def test_each_failure_reason_is_its_own_type():
    from service import signatures as s

    good = sign(PAYLOAD, APP_SECRET, T0)
    assert s.verify(PAYLOAD, good, [APP_SECRET_2, APP_SECRET], 300, now=T0) == APP_SECRET
    cases = [
        (PAYLOAD, None, s.MissingHeader),
        (PAYLOAD, "", s.MissingHeader),
        (PAYLOAD, "garbage", s.MalformedHeader),
        (PAYLOAD, "v1=" + "a" * 64, s.MalformedHeader),  # no t=
        (PAYLOAD, f"t={T0}", s.MalformedHeader),  # no v1=
        (PAYLOAD, "t=abc,v1=zz", s.MalformedHeader),
        (PAYLOAD, sign(PAYLOAD, APP_SECRET, T0 + 400), s.TimestampInFuture),
        (PAYLOAD, sign(PAYLOAD, APP_SECRET, T0 - 400), s.TimestampTooOld),
        (PAYLOAD, sign(PAYLOAD, APP_SECRET_2, T0), s.NoMatch),  # another secret
        (PAYLOAD.replace("acct_1", "acct_2"), good, s.NoMatch),  # tampered
        (PAYLOAD, sign(PAYLOAD, APP_SECRET_2, T0 - 400), s.NoMatch),  # old, and not ours
        (b"\xff" + PAYLOAD.encode(), good, s.BodyNotUTF8),
    ]
    for payload, header, reason in cases:
        assert _reason(payload, header) is reason, (payload, header)
        assert issubclass(reason, s.SignatureError)
    # within the tolerance either way is fine; the edges are inclusive
    for ts in (T0 - 300, T0 + 300):
        assert s.verify(PAYLOAD, sign(PAYLOAD, APP_SECRET, ts), [APP_SECRET], 300, now=T0)
    assert set(s.SECRET_INDEPENDENT) == {s.MissingHeader, s.MalformedHeader,
                                         s.TimestampInFuture, s.BodyNotUTF8}


def test_the_timestamp_checked_is_the_one_the_signature_covers():
    from service import signatures as s

    old = sign(PAYLOAD, APP_SECRET, T0 - 1000)
    # an item " t=<now>" is not named "t" for the stripe library, which signs over the old t=
    replayed = f" t={T0}," + old
    assert s.header_timestamp(replayed) == T0 - 1000
    assert _reason(PAYLOAD, replayed) is s.TimestampTooOld
    assert s.header_timestamp(f"t={T0},v1=x,t=1") == T0
