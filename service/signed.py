"""The base class of every endpoint the UI extension calls (`/api/...`).

A subclass implements `async def handle(self, req: SignedRequest) -> dict`; by the time it runs,
the request has passed every check, in this order:

- 503 when `STRIPE_APP_SECRETS` is not configured;
- 401 when `Stripe-Signature` is missing or malformed;
- 400 when the body is not a JSON object with string `user_id` and `account_id`, or is JSON
  that `JSON.stringify` could not have written (`NaN`, `Infinity`, a duplicate key), or nests
  deeper than `MAX_JSON_DEPTH` (see `service/jsonbody.py`);
- 401 when no `v1` in the header matches, under any app secret, either the raw body (the
  extension's `{...payload, user_id, account_id}`) or, failing that, the payload re-written as
  JavaScript writes it, or the canonical `{"user_id":...,"account_id":...}` (then only those two
  fields are covered: see `SignedRequest.signed_fields`), or when the timestamp is more than
  `SIGNATURE_TOLERANCE` seconds away from now;
- 403 when `requires_installation` is set and the account has no active installation;
- 401 `signature_replayed` when `single_use_signature` is set and the signature was already
  used on such an endpoint, by any replica (`models/used_signatures.py`).

Single-use signatures: an endpoint that changes state sets `single_use_signature = True`, and
each signature is then accepted once, wherever it arrives (the endpoint itself does nothing for
it). A signature is used when it passed every check above, before `handle` runs, whatever
`handle` answers. Endpoints that only read leave it off, and lean ones must (`lean` answers
from memory, without a database write): a replayed read changes nothing. Two requests with the
same body signed in the same second carry the same signature (Stripe signs the timestamp, in
seconds, and the body), so they are one request to a single-use endpoint: a client that means
two sends a field that tells them apart.

CORS: every answer, errors included, carries `Access-Control-Allow-Origin: *` (the extension's
origin is `null`), and `OPTIONS` answers the preflight.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterator
from typing import Any, NamedTuple

from models.used_signatures import signature_key, use_signature
from service.base import APIError
from service.ids import ACCOUNT_ID, USER_ID
from service.jsonbody import MalformedJSON, parse_json
from service.lean import LeanHandler
from service.signatures import (
    MissingHeader,
    SignatureError,
    canonical_identity,
    extension_signed_string,
    header_timestamp,
    verify,
)

log = logging.getLogger("app.signed")


class SignedRequest(NamedTuple):
    """What the signature proved, handed to `handle()` (immutable; a named tuple, made once
    per request, costs a third of a frozen dataclass)."""

    user_id: str
    account_id: str
    body: dict[str, Any]
    #: The body fields the signature covers: all of them when the raw body was signed,
    #: only `user_id` and `account_id` when the canonical two-key string was.
    signed_fields: frozenset[str]
    #: The role ids in the `stripe_roles` the extension sent (Stripe checks them against the
    #: user), or None when it sent none or the signature does not cover them.
    roles: list[str] | None
    timestamp: int
    #: The string the matching `v1` signs (with `timestamp`): what identifies the signature.
    signed_bytes: bytes = b""

    def has_role(self, *ids: str) -> bool:
        """Whether the signed `stripe_roles` hold one of these role ids."""
        return any(role in ids for role in self.roles or ())

    def signed(self, field: str) -> Any:
        """The value of a body field that must be covered by the signature (else 401)."""
        if field not in self.signed_fields:
            raise APIError(401, f"field {field!r} is not covered by the signature",
                           reason_for_log=f"unsigned field {field!r} required")
        return self.body.get(field)


class SignedHandler(LeanHandler):
    cors = True
    #: 403 unless the calling account has an active installation in some mode.
    requires_installation = True

    SUPPORTED_METHODS: tuple[str, ...] = ("POST", "OPTIONS")

    def options(self, *args: Any) -> None:
        self.set_status(204)
        self.set_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Stripe-Signature, Content-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.finish()

    # `lean = True` on a handler whose `handle` only reads (from the in-memory installation
    # index, say) lets `service/lean.py` answer its POSTs without Tornado's handler machinery,
    # with this same `answer()`.

    #: Accept each signature once (401 `signature_replayed` after that), on every replica: set
    #: on endpoints that change state. Never with `lean` (a lean handler only reads).
    single_use_signature = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.lean and cls.single_use_signature:
            raise TypeError(f"{cls.__name__}: a lean handler cannot take single-use signatures")

    def answer(self) -> Awaitable[Any]:
        req = self.signed_request()
        if self.single_use_signature:
            return self._answer_once(req)
        return self.handle(req)

    async def _answer_once(self, req: SignedRequest) -> Any:
        await self.use_signature(req)
        return await self.handle(req)

    async def use_signature(self, req: SignedRequest) -> None:
        """Record the signature as used, or refuse it when it already was (401)."""
        key = signature_key(req.timestamp, req.signed_bytes)
        expires = req.timestamp + self.config.signature_tolerance
        if not await self.storage.run(use_signature, key, expires):
            raise APIError(401, "this signature was already used: sign each request anew (two "
                           "requests with the same body signed in the same second carry the "
                           "same signature; add a field that tells them apart)",
                           code="signature_replayed",
                           reason_for_log=f"replayed signature (account {req.account_id}, "
                           f"t={req.timestamp})")

    def signed_request(self) -> SignedRequest:
        """Every check before `handle`: the signature (`verify_request`), then the
        installation when `requires_installation` is set."""
        req = self.verify_request()
        if self.requires_installation and not self.installations.is_active(req.account_id):
            raise APIError(403, "the app is not installed on this account",
                           code="not_installed",
                           reason_for_log=f"{req.account_id} has no active installation")
        return req

    async def handle(self, req: SignedRequest) -> Any:
        raise NotImplementedError

    def verify_request(self) -> SignedRequest:
        secrets = self.config.app_secrets
        if not secrets:
            raise APIError(503, "signed requests are not configured on this server",
                           code="not_configured", reason_for_log="STRIPE_APP_SECRETS unset")
        header = self.request.headers.get("Stripe-Signature")
        try:
            if not header:
                raise MissingHeader("missing Stripe-Signature header")
            timestamp = header_timestamp(header)
        except SignatureError as exc:
            raise APIError(401, "missing or malformed signature", code="bad_signature",
                           reason_for_log=str(exc)) from None
        body, user_id, account_id = self._parse_body()
        tolerance = self.config.signature_tolerance
        error: SignatureError | None = None
        for signed_bytes, fields in self._candidates(body, user_id, account_id):
            try:
                verify(signed_bytes, header, secrets, tolerance, timestamp=timestamp)
            except SignatureError as exc:
                error = error or exc
                continue
            roles = role_ids(body.get("stripe_roles")) if "stripe_roles" in fields else None
            return SignedRequest(user_id, account_id, body, fields, roles, timestamp,
                                 signed_bytes)
        raise APIError(401, "signature verification failed", code="bad_signature",
                       reason_for_log=f"{error} (account {account_id})")

    def _candidates(self, body: dict[str, Any], user_id: str,
                    account_id: str) -> Iterator[tuple[bytes, frozenset[str]]]:
        """The strings the signature may be over, most likely (and most complete) first."""
        raw = self.body
        everything = frozenset(body)
        yield raw, everything
        payload = {k: v for k, v in body.items() if k not in ("user_id", "account_id")}
        rewritten = extension_signed_string(payload, user_id, account_id).encode()
        if rewritten != raw:
            yield rewritten, everything
        canonical = canonical_identity(user_id, account_id).encode()
        if canonical not in (raw, rewritten):
            yield canonical, frozenset(("user_id", "account_id"))

    def _parse_body(self) -> tuple[dict[str, Any], str, str]:
        try:
            body = parse_json(self.body)
        except MalformedJSON as exc:
            raise APIError(400, f"body must be a JSON object: {exc}") from None
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        user_id, account_id = body.get("user_id"), body.get("account_id")
        if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
            raise APIError(400, "body needs a string user_id (usr_...)")
        if not isinstance(account_id, str) or not ACCOUNT_ID.fullmatch(account_id):
            raise APIError(400, "body needs a string account_id (acct_...)")
        roles = body.get("stripe_roles")
        if roles is not None and not (
            isinstance(roles, list) and all(isinstance(r, str) or _is_role_definition(r)
                                            for r in roles)
        ):
            raise APIError(400, "stripe_roles must be a list of role definitions or role ids")
        return body, user_id, account_id


def _is_role_definition(value: Any) -> bool:
    """The SDK's `RoleDefinition`: `{"id"?: str, "name": str, "type": "builtIn"|"custom"}`."""
    return isinstance(value, dict) and isinstance(value.get("id", ""), str)


def role_ids(roles: list[Any] | None) -> list[str] | None:
    """The ids of `stripe_roles` entries: plain strings as they are, definitions by their `id`
    (one without an id, as on some older accounts, names no role and is left out)."""
    if roles is None:
        return None
    return [r if isinstance(r, str) else r["id"] for r in roles
            if isinstance(r, str) or r.get("id")]
