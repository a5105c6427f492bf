"""`POST /webhooks`: Stripe events for every mode (live, test, sandbox). No CORS.

Answers:
- 200 `{"received": true, "duplicate": false}` once the event is durably stored, that is once
  the transaction holding it committed (events arriving together share one transaction, a group
  commit: `Storage.grouped`, `models/events.store_events`; "durably" is `SQLITE_SYNCHRONOUS`'s,
  docs/reliability.md); processing happens after the answer, see `jobs/events.py`;
  `"duplicate": true` for an event id already stored, which is not processed again;
- 400 when the signature does not verify against the raw body with any webhook secret within
  the tolerance (missing, malformed, tampered, expired or future), when a live event is signed
  with a test-mode secret (test secrets must never vouch for live data), or when the verified
  body is not a Stripe event: strict JSON (`service/jsonbody.py`, at most `MAX_EVENT_DEPTH`
  levels) with an `evt_` id, a printable-ASCII type of at most 255 characters, a boolean
  livemode, a `created` between 0 and 2**63-1, an `acct_` account or none, and `data` an
  object (event handlers read `data.object`): an event the database could never store answers
  400, not 503 on every retry;
- each 400 is also kept, bounded, in the last `KEEP` rejected deliveries the status page shows
  (`service/rejections.py`);
- 503 when no webhook secret is configured for either mode, or the event cannot be stored (so
  that Stripe retries it).

The mode of an event is the mode of the secret that verified it, read with its signed
`livemode` (`Mode.of_livemode`), never from an unsigned field:
- a sandbox secret (`STRIPE_WEBHOOK_SECRETS_SANDBOX`, the managed sandbox's endpoints) makes a
  `sandbox` event; a sandbox never sends `livemode: true`, so such a body is refused (400);
- a live or test secret makes a live or test event by its `livemode`: a test-mode event may
  arrive signed with the live endpoint's secret (an app installed in both modes gets its test
  events at both endpoints), and is still a test event. A live or test secret never makes a
  sandbox event, nor a sandbox secret a live or test one (no secret is configured for two
  modes: `Config`).

Organizations: the event's `context` (API 2025-04-30.basil) is stored with it when it is a
well-formed context (`models/context.py`); a malformed one is dropped with a log line, never
the event (Stripe signed it; refusing it would lose it).

`answer()` does all of the above (verify, parse, validate, store, count, answer's value); the
handler is a `LeanHandler` (`service/lean.py`), served by the lean path or the full one alike.
"""

from __future__ import annotations

import logging
import re

from models.context import event_context
from models.enums import MODES, Mode
from models.events import NewEvent, store_events
from service.base import APIError
from service.ids import ACCOUNT_ID, EVENT_ID
from service.jsonbody import MAX_EVENT_DEPTH, MalformedJSON, parse_json
from service.lean import LeanHandler
from service.rejections import RejectionLog
from service.signatures import SECRET_INDEPENDENT, SignatureError, verify

log = logging.getLogger("app.webhooks")

#: What the event columns hold (models/events.py): a value outside these would fail to store
#: on every retry, so it is refused (400) instead of answered 503 forever.
MAX_CREATED = 2**63 - 1  # BigIntegerField
EVENT_TYPE = re.compile(r"[\x21-\x7e]{1,255}")  # CharField(255); Stripe's types are ASCII


class WebhookHandler(LeanHandler):
    lean = True

    def _verify(self) -> Mode:
        """Return the mode of the secret that verified the body."""
        secrets = self.config.webhook_secrets
        if not any(secrets.values()):
            raise APIError(503, "webhooks are not configured on this server",
                           code="not_configured",
                           reason_for_log="no STRIPE_WEBHOOK_SECRETS_LIVE, _TEST or _SANDBOX")
        header = self.request.headers.get("Stripe-Signature")
        errors = []
        for mode in MODES:
            if not secrets[mode]:
                continue
            try:
                verify(self.body, header, secrets[mode], self.config.signature_tolerance)
                return mode
            except SECRET_INDEPENDENT as exc:
                errors.append(str(exc))
                break  # the other mode's secrets would fail the same way
            except SignatureError as exc:
                errors.append(str(exc))
        self.metrics.webhook_outcomes["rejected"].inc()
        raise APIError(400, "webhook signature verification failed", code="bad_signature",
                       reason_for_log="; ".join(dict.fromkeys(errors)))

    @property
    def rejections(self) -> RejectionLog:
        return self.settings["rejections"]

    async def answer(self) -> dict[str, bool]:
        """Verify, parse, validate and store the event: the 200 answer's value, or APIError
        (a 400 is also kept in the rejection log, for the status page)."""
        try:
            event = self._accepted()
        except APIError as exc:
            if exc.status_code == 400:
                self.rejections.record(self.request, f"{exc.code}: {exc.log_message}")
            raise
        try:
            stored = await self.storage.grouped(store_events).submit(event)
        except Exception as exc:  # anything but stored-for-sure makes Stripe retry
            self.metrics.webhook_outcomes["store_failed"].inc()
            raise APIError(503, "the event could not be stored; please retry",
                           code="unavailable",
                           reason_for_log=f"storing {event.id} failed: {type(exc).__name__}: "
                                          f"{str(exc)[:200]}") from None
        if stored and event.needs_processing:
            self.events.submit(event.id)
        self.metrics.webhook_outcomes["stored" if stored else "duplicate"].inc()
        log.debug("event %s %s %s/%s%s", event.id, event.type, event.account_id or "platform",
                  event.mode, "" if stored else " (duplicate)")
        return {"received": True, "duplicate": not stored}

    def _accepted(self) -> NewEvent:
        """The verified, parsed and checked event to store, or APIError."""
        secret_mode = self._verify()
        try:
            event = parse_json(self.body, MAX_EVENT_DEPTH)
        except MalformedJSON as exc:
            raise APIError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(event, dict) or event.get("object") != "event":
            raise APIError(400, "the body is not a Stripe event")
        event_id, type_ = event.get("id"), event.get("type")
        livemode, created = event.get("livemode"), event.get("created")
        account = event.get("account")
        if (not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id)
                or not isinstance(type_, str) or not EVENT_TYPE.fullmatch(type_)
                or not isinstance(livemode, bool)
                or not isinstance(created, int) or isinstance(created, bool)
                or not 0 <= created <= MAX_CREATED
                or not isinstance(event.get("data", {}), dict)
                or (account is not None and not (isinstance(account, str)
                                                 and ACCOUNT_ID.fullmatch(account)))):
            raise APIError(400, "the event lacks a valid id, type, livemode or created")
        if livemode and secret_mode != Mode.LIVE:
            self.metrics.webhook_outcomes["rejected"].inc()
            raise APIError(400, "a live event must be signed with a live webhook secret",
                           code="bad_signature",
                           reason_for_log=f"live event {event_id} signed with a "
                                          f"{secret_mode} secret")
        raw_context = event.get("context")
        context = event_context(raw_context)
        if raw_context is not None and context is None:
            log.warning("event %s: its context is not a well-formed Stripe-Context (%s); the "
                        "event is stored without it", event_id, repr(raw_context)[:80])
        mode = Mode.of_livemode(livemode, secret_mode == Mode.SANDBOX)
        return NewEvent(event_id, type_, account, livemode, created, self.body.decode("utf-8"),
                        self.events.needs_processing(type_, account, mode, context), mode,
                        context)
