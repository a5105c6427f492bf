"""`service.signatures.verify_header` (the HMAC key object reused per secret) gives the same
answer as `stripe.WebhookSignature.verify_header` on every input: accepted, refused with
`SignatureVerificationError`, or failing with the same other exception. Deterministic
(`derandomize`): the same examples on every run."""

from __future__ import annotations

import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.signatures import verify_header

same = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

secrets = st.one_of(st.sampled_from(["absec_one", "absec_two", "whsec_x" * 5, "", "  ", "é"]),
                    st.text(max_size=40))
payloads = st.one_of(st.text(max_size=200), st.sampled_from(['{"user_id":"usr_1"}', ""]))
_value = st.one_of(st.text(max_size=70), st.integers().map(str),
                   st.text("0123456789abcdef", min_size=64, max_size=64),
                   st.sampled_from([" 12", "1_0", "+5", "-3", "١٢", "12=x"]))
_item = st.tuples(st.sampled_from(["t", "v1", "v0", "T", " t", "v1 ", "", "x"]),
                  st.sampled_from(["=", "==", ""]), _value).map("".join)
headers = st.one_of(st.none(), st.text(), st.lists(_item, max_size=6).map(",".join),
                    st.binary().map(lambda b: b.decode("latin-1")))


def outcome(check, *args):
    try:
        check(*args)
    except stripe.SignatureVerificationError:
        return "refused"
    except Exception as exc:  # the same other failure (TypeError on non-ASCII, say)
        return type(exc).__name__
    return "accepted"


def library(payload, header, secret):
    stripe.WebhookSignature.verify_header(payload, header, secret, None)


@same
@given(payloads, headers, secrets)
def test_any_header(payload, header, secret):
    assert outcome(verify_header, payload, header, secret) == outcome(
        library, payload, header, secret)


@same
@given(payloads, secrets, secrets, st.integers(0, 10**12), st.lists(_item, max_size=3),
       st.booleans())
def test_real_signatures_among_noise(payload, secret, signer, timestamp, noise, first):
    """Headers the library itself made (under the same secret or another), with other items
    before or after: the case where a match decides."""
    made = stripe.WebhookSignature.generate_signature_header(payload, signer or "s", timestamp)
    header = ",".join([made, *noise] if first else [*noise, made])
    assert outcome(verify_header, payload, header, secret) == outcome(
        library, payload, header, secret)


@same
@given(payloads, secrets, secrets, st.integers(0, 10**12), st.lists(_item, max_size=3),
       st.booleans())
def test_verify_accepts_what_the_library_accepts(payload, secret, signer, timestamp, noise,
                                                 first):
    """`verify` (the header read once for every secret, the body's own bytes signed) accepts
    exactly the headers the library accepts, among those whose `t=` it reads (tolerance left
    out: the library's is not checked here)."""
    from service.signatures import SignatureError, header_timestamp, verify

    made = stripe.WebhookSignature.generate_signature_header(payload, signer or "s", timestamp)
    header = ",".join([made, *noise] if first else [*noise, made])
    try:
        t = header_timestamp(header)
    except SignatureError:
        return
    try:
        ours = verify(payload.encode(), header, [secret], 0, now=t) == secret
    except SignatureError:
        ours = False
    assert ours == (outcome(library, payload, header, secret) == "accepted")
