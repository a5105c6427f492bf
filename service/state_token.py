"""Install-link `state` tokens: signed, expiring, single-use, bound to one browser; no storage
until used.

    tokens = StateTokens(config.app_secrets)
    state = tokens.issue(browser_cookie)                       # GET /install: nothing written
    checked = tokens.check(state, browser_cookie)              # the callback
    checked.reason        # None, or why the state cannot be used (for the log)
    checked.nonce, checked.expires_at                          # for the single-use record

A token is `base64url(version | nonce (16 bytes) | expiry (uint32 s) | browser (16 bytes) |
HMAC-SHA256)`, 92 characters. `browser` is the first 16 bytes of SHA-256 of the browser's
random install cookie (HttpOnly, SameSite=Lax), so only the browser that started the install
can finish it, and the cookie itself never leaves that browser. The HMAC key is derived from
an app secret (`STRIPE_APP_SECRETS`): the first signs, all verify, so a rotation keeps states
issued just before it. Single use is `models.install_state.use_state`, called when a valid
callback uses the state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Sequence
from typing import NamedTuple

STATE_TTL = 600
VERSION = 1
_BODY = struct.Struct(">B16sI16s")
_MAC_SIZE = 32
_KEY_LABEL = b"stripe-app-backend install state v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def browser_hash(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode()).digest()[:16]


class CheckedState(NamedTuple):
    reason: str | None  # None: usable
    nonce: str = ""
    expires_at: float = 0.0


class StateTokens:
    def __init__(self, app_secrets: Sequence[str], ttl: int = STATE_TTL) -> None:
        self._keys = [_key(s) for s in app_secrets]
        self.ttl = ttl

    def issue(self, browser_cookie: str, now: float | None = None) -> str:
        """A fresh state for the browser holding `browser_cookie`, valid `ttl` seconds."""
        expires = int(now if now is not None else time.time()) + self.ttl
        body = _BODY.pack(VERSION, secrets.token_bytes(16), expires, browser_hash(browser_cookie))
        mac = hmac.new(self._keys[0], body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def check(self, state: str, browser_cookie: str | None,
              now: float | None = None) -> CheckedState:
        """Whether this browser may use `state` now (nothing is recorded here)."""
        try:
            raw = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
        except (binascii.Error, ValueError):
            return CheckedState("malformed state")
        if len(raw) != _BODY.size + _MAC_SIZE:
            return CheckedState("malformed state")
        body, mac = raw[:_BODY.size], raw[_BODY.size:]
        if not any(hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac)
                   for key in self._keys):
            return CheckedState("state not issued by this server")
        version, nonce, expires, browser = _BODY.unpack(body)
        if version != VERSION:
            return CheckedState("state of an unknown version")
        if expires < (now if now is not None else time.time()):
            return CheckedState("state expired")
        if not browser_cookie or not hmac.compare_digest(browser, browser_hash(browser_cookie)):
            return CheckedState("state belongs to another browser")
        return CheckedState(None, nonce.hex(), float(expires))
