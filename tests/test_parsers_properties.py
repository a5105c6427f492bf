"""Property-based tests (hypothesis) on the two parsers every unauthenticated request reaches
(issue 13, section 2): the Stripe-Signature header parser and the body parser. Whatever they are
given, they return or raise one of their typed errors, never anything else (which would be a
500). Deterministic (`derandomize`): the same examples on every run. Counts: docs/reliability.md.
"""

from __future__ import annotations

import json
import re

from conftest import APP_SECRET, APP_SECRET_2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.jsonbody import MAX_JSON_DEPTH, MalformedJSON, TooDeep, parse_json
from service.signatures import (
    SignatureError,
    header_timestamp,
    js_stringify,
    sign,
    verify,
)

EXAMPLES = 300
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NOW = 1_700_000_000

# ---- the header -------------------------------------------------------------------------------

#: Headers shaped like Stripe's, with hostile parts: non-ASCII, huge or negative numbers,
#: repeated or empty items, stray `=` and `,`.
_item_value = st.one_of(st.text(max_size=70), st.integers().map(str),
                        st.text("0123456789abcdef", min_size=64, max_size=64))
_item = st.tuples(st.sampled_from(["t", "v1", "v0", "T", " t", "v1 ", "", "x"]),
                  st.sampled_from(["=", "==", ""]), _item_value).map("".join)
headers = st.one_of(st.text(), st.lists(_item, max_size=6).map(",".join),
                    st.binary().map(lambda b: b.decode("latin-1")))  # as Tornado decodes


@fuzz
@given(headers)
def test_header_timestamp_returns_an_int_or_raises_a_signature_error(header):
    try:
        assert isinstance(header_timestamp(header), int)
    except SignatureError:
        pass


@fuzz
@given(st.one_of(st.binary(), st.text()), st.one_of(st.none(), headers),
       st.integers(0, 10**6))
def test_verify_never_raises_anything_else(payload, header, tolerance):
    try:
        assert verify(payload, header, [APP_SECRET, APP_SECRET_2], tolerance, now=NOW) in (
            APP_SECRET, APP_SECRET_2)
    except SignatureError:
        pass


@fuzz
@given(st.text(), st.sampled_from([APP_SECRET, APP_SECRET_2]), st.integers(-300, 300))
def test_verify_accepts_what_stripe_signs(payload, secret, skew):
    header = sign(payload, secret, NOW + skew)
    assert verify(payload, header, [APP_SECRET, APP_SECRET_2], 300, now=NOW) == secret
    assert verify(payload.encode(), header, [APP_SECRET_2, APP_SECRET], 300, now=NOW) == secret


# ---- the body ---------------------------------------------------------------------------------

#: JSON-ish text: the grammar's characters, NaN and friends, deep brackets, escapes.
_tokens = st.sampled_from(['[', ']', '{', '}', '"', ':', ',', '\\', '\\u', 'd800', '0', '1e999',
                           '-', '.', 'e', 'NaN', 'Infinity', 'null', 'true', ' ', '"a"', 'é'])
json_ish = st.lists(_tokens, max_size=80).map("".join).map(lambda s: s.encode())
deep = st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.sampled_from("[{")).map(
    lambda t: (t[2] * t[0] + ("]" if t[2] == "[" else "}") * t[1]).encode())


@fuzz
@given(st.one_of(st.binary(), json_ish, deep))
def test_parse_json_returns_or_raises_malformed_json(raw):
    try:
        parse_json(raw)
    except MalformedJSON:
        pass


def _no_pair(text: str) -> bool:
    """Lone surrogates only: `json.loads` makes a high-low pair one character (as JavaScript
    sees it), so a Python string holding the pair as two never comes from a body."""
    return not re.search("[\ud800-\udbff][\udc00-\udfff]", text)


#: The values `JSON.stringify` can write (finite numbers, unique keys, lone surrogates too),
#: nested within the limit.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010,
                                       exclude_categories=())).filter(_no_pair),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@fuzz
@given(json_values)
def test_what_json_stringify_writes_parses_back(value):
    for raw in (js_stringify(value).encode(), json.dumps(value).encode()):
        parsed = parse_json(raw)
        assert parsed == value


@fuzz
@given(st.integers(1, 3 * MAX_JSON_DEPTH), st.text(max_size=20))
def test_depth_limit_is_exact(depth, leaf):
    raw = ("[" * depth + json.dumps(leaf) + "]" * depth).encode()
    if depth <= MAX_JSON_DEPTH:
        assert parse_json(raw) is not None
    else:
        try:
            parse_json(raw)
        except TooDeep:
            pass
        else:
            raise AssertionError(f"depth {depth} accepted")



# ---- the answer encoder -----------------------------------------------------------------------

_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
              # lone surrogates (hypothesis's text never holds them), as a request may carry
              st.lists(st.sampled_from(["a", "\ud800", "\udfff", "é", "\u2028"])).map("".join)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


@fuzz
@given(_json_values)
def test_answers_are_encoded_as_the_json_encoder_would(value):
    """`json_dumps` (the C encoder built once) writes what `JSONEncoder(separators=(",", ":"),
    ensure_ascii=False).encode` writes, lone surrogates as escapes, on any JSON value."""
    from service.base import json_dumps

    expected = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode(value)
    assert json_dumps(value) == expected.encode("utf-8", "backslashreplace")
