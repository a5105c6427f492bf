"""Stripe-Signature checks (README, "Writing a signed endpoint"), built on the official `stripe`
library.

`verify(payload, header, secrets, tolerance)` accepts a header when any `v1` in it matches the
payload under any of the secrets (two are active while a secret is rolled), and its timestamp is
within `tolerance` seconds of now in either direction. Whether a signature matches is
`stripe.WebhookSignature.verify_header`'s decision, made by `verify_header` here: the library's
own header parsing and checks, with the HMAC key object made once per secret instead of once
per request (the same answer on every input: a property test compares the two). The timestamp
checks are ours, on the `t=` the library signs over (the first item named exactly `t`).

Why a check failed is the type of the `SignatureError` raised, never its text: `MissingHeader`,
`MalformedHeader`, `TimestampInFuture`, `BodyNotUTF8` (the `SECRET_INDEPENDENT` ones: another
secret would fail the same way), `NoMatch`, and `TimestampTooOld` (a signature matched, but
too long ago).

`js_stringify` writes a dict exactly as JavaScript's `JSON.stringify` would (compact, key order
kept, non-ASCII as is), which is how the extension's signed strings are formed.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
import time
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

import stripe
from stripe import SignatureVerificationError, WebhookSignature


class SignatureError(Exception):
    """Verification failed; `str(self)` says why, for the log (never a secret or the body)."""


class MissingHeader(SignatureError):
    """No Stripe-Signature header, or an empty one."""


class MalformedHeader(SignatureError):
    """The header lacks a `t=` (digits) or a `v1=`, is not ASCII, or is longer than
    `MAX_HEADER`."""


class TimestampInFuture(SignatureError):
    """`t=` is more than the tolerance ahead of now."""


class BodyNotUTF8(SignatureError):
    """The payload is bytes that are not UTF-8 (Stripe signs text)."""


class NoMatch(SignatureError):
    """No `v1` in the header matches the payload under any of the secrets."""


class TimestampTooOld(SignatureError):
    """A `v1` matches, but `t=` is more than the tolerance behind now (a replay, or a delay)."""


#: Failures another secret cannot change: a caller holding several pools may stop at these.
SECRET_INDEPENDENT: tuple[type[SignatureError], ...] = (MissingHeader, MalformedHeader,
                                                       TimestampInFuture, BodyNotUTF8)


#: The longest Stripe-Signature header read (Stripe's own hold a `t=`, a `v1` per active secret
#: and perhaps a `v0`: a few hundred characters).
MAX_HEADER = 4096


def _check_text(header: str) -> None:
    if len(header) > MAX_HEADER or not header.isascii():
        raise MalformedHeader("malformed Stripe-Signature header (not ASCII, or too long)")


def header_timestamp(header: str) -> int:
    """The header's `t=`: the value of its first item named exactly `t`, as the stripe library
    reads it (so that the timestamp checked is the one the signature covers).

    A header that is not ASCII is malformed: Stripe writes hex digests, and the stripe library
    would fail comparing non-ASCII text (`hmac.compare_digest` raises `TypeError`)."""
    _check_text(header)
    if "v1=" in header:
        for item in header.split(","):
            key, _, value = item.partition("=")
            if key == "t":
                digits = value.partition("=")[0].strip()
                if digits.isascii() and digits.isdigit() and len(digits) <= 12:
                    return int(digits)
                break
    raise MalformedHeader("malformed Stripe-Signature header (needs t= and v1=)")


@functools.lru_cache(maxsize=64)
def _hmac_key(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 object keyed with `secret` and nothing hashed yet, to `copy()` per use
    (keying costs two hash blocks and two objects; a copy costs neither)."""
    return hmac.new(secret.encode("utf-8"), digestmod=sha256)


def _parse(header: str, payload: str | None = None) -> tuple[int, list[str]]:
    """The `t=` and the `v1` signatures in `header`, as the library reads them (its own
    `_get_timestamp_and_signatures`), or `SignatureVerificationError` where it would refuse
    the header before comparing."""
    cls = WebhookSignature
    try:
        timestamp, signatures = cls._get_timestamp_and_signatures(header, cls.EXPECTED_SCHEME)
    except Exception:
        raise SignatureVerificationError(
            "Unable to extract timestamp and signatures from header", header, payload) from None
    if not signatures:
        raise SignatureVerificationError("No signatures found with expected scheme", header,
                                         payload)
    return timestamp, signatures


def _matches(signed: bytes, signatures: list[str], secret: str) -> bool:
    """Whether any of `signatures` is the HMAC-SHA256 of `signed` (`b"<t>." + payload`) under
    `secret`, compared in constant time."""
    mac = _hmac_key(secret).copy()
    mac.update(signed)
    expected = mac.hexdigest()
    return any(hmac.compare_digest(expected, s) for s in signatures)


def _blank(secret: str | None) -> bool:
    return secret is None or secret.strip(" \t\r\n\f\v") == ""


def verify_header(payload: str, header: str | None, secret: str) -> None:
    """`stripe.WebhookSignature.verify_header(payload, header, secret)` (no tolerance), with the
    key object reused per secret: raises `stripe.SignatureVerificationError` exactly when the
    library does (and whatever else it raises on the same input). `verify` is built from the
    same parts."""
    if not header:
        raise SignatureVerificationError("No Stripe-Signature header value", header, payload)
    if _blank(secret):
        raise SignatureVerificationError("No webhook secret value", header, payload)
    timestamp, signatures = _parse(header, payload)
    signed = ("%d.%s" % (timestamp, payload)).encode("utf-8")  # noqa: UP031 (as stripe)
    if not _matches(signed, signatures, secret):
        raise SignatureVerificationError(
            "No signatures found matching the expected signature for payload", header, payload)


def verify(payload: bytes | str, header: str | None, secrets: Sequence[str], tolerance: int,
           now: float | None = None, timestamp: int | None = None) -> str:
    """Return the secret that verified `payload`, or raise a `SignatureError` subclass.

    `timestamp` is the header's `t=`, when the caller has parsed it already. The header's
    signatures are read once for every secret, and the signed bytes are the body's own (UTF-8
    checked), not decoded and encoded again.
    """
    if not header:
        raise MissingHeader("missing Stripe-Signature header")
    if timestamp is None:
        timestamp = header_timestamp(header)
    else:
        _check_text(header)
    now = time.time() if now is None else now
    if timestamp > now + tolerance:
        raise TimestampInFuture(f"timestamp {timestamp} is more than {tolerance}s in the future")
    if isinstance(payload, str):
        body = payload.encode("utf-8")
    else:
        body = bytes(payload)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyNotUTF8("body is not UTF-8") from None
    try:
        signed_at, signatures = _parse(header)
    except SignatureVerificationError:
        raise NoMatch("no v1 signature matches any configured secret") from None
    # The `t=` the library reads and signs (the same as `timestamp`, checked above, for any
    # header `header_timestamp` accepts: its first item named `t`, digits only).
    signed = b"%d." % signed_at + body
    for secret in secrets:
        if _blank(secret) or not _matches(signed, signatures, secret):
            continue
        if tolerance and timestamp < now - tolerance:
            raise TimestampTooOld(f"timestamp {timestamp} is more than {tolerance}s old")
        return secret
    raise NoMatch("no v1 signature matches any configured secret")


def _js_number(value: int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        return text
    # JavaScript writes plain decimals for 1e-7 < |x| < 1e21, exponents outside (as 1e-7 and
    # 1e+21); Python switches to exponents below 1e-4 and writes 1e-05.
    mantissa, exp_text = text.split("e")
    exp = int(exp_text)
    if -7 < exp < 0:
        sign = "-" if mantissa.startswith("-") else ""
        digits = mantissa.lstrip("-").replace(".", "")
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp)}"


#: A UTF-16 surrogate on its own: in a Python string decoded from JSON, any surrogate is lone
#: (a pair becomes one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _js_string(text: str) -> str:
    """A JSON string literal as `JSON.stringify` writes it: like `json.dumps` without ASCII
    escaping, and a lone surrogate as a lowercase `\\udxxx` escape (ES2019 well-formed
    `JSON.stringify`), so that the result is always encodable as UTF-8."""
    literal = json.dumps(text, ensure_ascii=False)
    if _SURROGATE.search(literal):
        literal = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", literal)
    return literal


def js_stringify(value: Any) -> str:
    """`JSON.stringify(value)` for the JSON values a signed payload can hold."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return _js_number(value)
    if isinstance(value, str):
        return _js_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_js_string(str(k))}:{js_stringify(v)}"
                              for k, v in value.items()) + "}"
    raise TypeError(f"cannot stringify {type(value).__name__}")


def canonical_identity(user_id: str, account_id: str) -> str:
    """The default signed string: `{"user_id":...,"account_id":...}` in that order."""
    return js_stringify({"user_id": user_id, "account_id": account_id})


def install_signed_string(state: str, user_id: str, account_id: str) -> str:
    """What `install_signature` signs: `{"state":...,"user_id":...,"account_id":...}`."""
    return js_stringify({"state": state, "user_id": user_id, "account_id": account_id})


def extension_signed_string(payload: dict[str, Any], user_id: str, account_id: str) -> str:
    """What `fetchStripeSignature(payload)` signs: `{...payload, user_id, account_id}`.

    Like JavaScript's object spread, `user_id`/`account_id` keep the payload's position when
    the payload already has them, and take the new values.
    """
    merged = dict(payload)
    merged["user_id"] = user_id
    merged["account_id"] = account_id
    return js_stringify(merged)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `payload`, made by the stripe library (for tools/tests)."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
