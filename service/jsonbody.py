"""Request bodies as `JSON.stringify` writes them, parsed without trusting the sender.

    parse_json(raw, max_depth=MAX_JSON_DEPTH) -> Any

raises a `MalformedJSON` subclass, and nothing else, for any bytes:

- `NotUTF8`: the bytes are not UTF-8 (a BOM or UTF-16 is not accepted either);
- `TooDeep`: arrays and objects nested more than `max_depth` levels (the top-level value is
  level 1). Checked by a byte scan before parsing (`check_depth`), so that neither
  `json.loads` nor anything that walks the value later (the JavaScript re-serialiser, a
  handler) can run out of stack;
- `NonFiniteNumber`: `NaN`, `Infinity`, `-Infinity`, or a number too large for a double
  (`1e999`), none of which `JSON.stringify` ever writes (it writes `null` for them, so a
  signature over `null` must not vouch for them);
- `DuplicateKey`: an object holding a key twice (`JSON.stringify` never writes that either, and
  which of the two values a reader sees differs between parsers);
- `InvalidJSON`: anything else `json.loads` refuses (including integers of more than 4,300
  digits).

Each error's `str()` is safe to show to the caller: it never quotes the body.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

#: How deep a signed extension body may nest (README, "Operating limits"). A Stripe App payload
#: is shallow: the body object, `stripe_roles` and its role objects are 3 levels.
MAX_JSON_DEPTH = 32
#: How deep a verified webhook event may nest: Stripe's objects, with `previous_attributes`,
#: stay far below this.
MAX_EVENT_DEPTH = 64


class MalformedJSON(ValueError):
    """The body is not JSON as `JSON.stringify` writes it; `str(self)` says why."""


class NotUTF8(MalformedJSON):
    pass


class TooDeep(MalformedJSON):
    pass


class NonFiniteNumber(MalformedJSON):
    pass


class DuplicateKey(MalformedJSON):
    pass


class InvalidJSON(MalformedJSON):
    pass


#: A complete JSON string token (the unrolled form: no backtracking on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"')
#: Keeps only brackets, as `[` and `]`.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@functools.lru_cache(maxsize=4)
def _balanced_within(limit: int) -> re.Pattern[bytes]:
    """Matches exactly the balanced `[`/`]` strings nested at most `limit` deep: level k is
    any number of pairs of brackets, each around a level k-1 string. Possessive, so it never
    backtracks: one linear pass in C."""
    pattern = b""
    for _ in range(limit):
        pattern = rb"(?:\[" + pattern + rb"\])*+"
    return re.compile(pattern)


def check_depth(raw: bytes, limit: int) -> None:
    """Raise `TooDeep` when arrays and objects in `raw` nest more than `limit` levels (brackets
    inside strings do not count), or `InvalidJSON` when its brackets do not balance and could
    hide such nesting. Costs two `bytes.count` calls when there are at most `limit` opening
    brackets (any real payload), else a few linear passes in C (about 70 ms for 1 MB of
    brackets)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    brackets = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    if _balanced_within(limit).fullmatch(brackets):
        return
    if brackets.count(b"[") != brackets.count(b"]"):
        raise InvalidJSON("the body is not valid JSON")
    raise TooDeep(f"JSON nested deeper than {limit} levels")


def _no_constants(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NonFiniteNumber("a number is too large for a double")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKey("an object holds the same key twice")
    return obj


#: Built once (`json.loads` with hooks builds a decoder per call): immutable, thread-safe.
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float,
                            object_pairs_hook=_unique_keys)


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in `raw`, or a `MalformedJSON` subclass (see the module docstring)."""
    # Cheap bound first: fewer brackets than the limit cannot nest deeper than it.
    check_depth(raw, max_depth)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotUTF8("the body is not UTF-8") from None
    try:
        return _DECODER.decode(text)
    except MalformedJSON:
        raise
    except RecursionError:  # cannot happen below the depth limit; never a 500 if it does
        raise TooDeep(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # JSONDecodeError, or an integer over 4,300 digits
        raise InvalidJSON("the body is not valid JSON") from None
