"""`POST /webhooks`: Stripe events for both modes. No CORS.

Answers:
- 200 `{"received": true, "duplicate": false}` once the event is durably stored (processing
  happens after the answer, see `jobs/events.py`); `"duplicate": true` for an event id already
  stored, which is not processed again;
- 400 when the signature does not verify against the raw body with any webhook secret within
  the tolerance (missing, malformed, tampered, expired or future), when a live event is signed
  with a test-mode secret (test secrets must never vouch for live data), or when the verified
  body is not a Stripe event;
- 503 when no webhook secret is configured for either mode, or the event cannot be stored (so
  that Stripe retries it).

A test-mode event may arrive signed with the live endpoint's secret (an app installed in both
modes gets its test events at both endpoints): its mode is still `livemode=false`.
"""

from __future__ import annotations

import json
import logging

from models.events import store_event
from service.base import APIError, BaseHandler
from service.ids import EVENT_ID
from service.signatures import SECRET_INDEPENDENT, SignatureError, verify

log = logging.getLogger("app.webhooks")


class WebhookHandler(BaseHandler):
    SUPPORTED_METHODS = ("POST",)

    def _verify(self) -> str:
        """Return the mode of the secret that verified the body."""
        secrets = self.config.webhook_secrets
        if not secrets["live"] and not secrets["test"]:
            raise APIError(503, "webhooks are not configured on this server",
                           code="not_configured",
                           reason_for_log="no STRIPE_WEBHOOK_SECRETS_LIVE or _TEST")
        header = self.request.headers.get("Stripe-Signature")
        errors = []
        for mode in ("live", "test"):
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
        self.metrics.webhooks.labels("rejected").inc()
        raise APIError(400, "webhook signature verification failed", code="bad_signature",
                       reason_for_log="; ".join(dict.fromkeys(errors)))

    async def post(self) -> None:
        secret_mode = self._verify()
        try:
            event = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the body is not JSON") from None
        if not isinstance(event, dict) or event.get("object") != "event":
            raise APIError(400, "the body is not a Stripe event")
        event_id, type_ = event.get("id"), event.get("type")
        livemode, created = event.get("livemode"), event.get("created")
        account = event.get("account")
        if (not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id)
                or not isinstance(type_, str) or not type_ or len(type_) > 255
                or not isinstance(livemode, bool)
                or not isinstance(created, int) or isinstance(created, bool)
                or (account is not None and not isinstance(account, str))):
            raise APIError(400, "the event lacks a valid id, type, livemode or created")
        if livemode and secret_mode != "live":
            self.metrics.webhooks.labels("rejected").inc()
            raise APIError(400, "a live event must be signed with a live webhook secret",
                           code="bad_signature",
                           reason_for_log=f"live event {event_id} signed with a test secret")
        process = self.events.needs_processing(type_, account)
        try:
            stored = await self.storage.run(store_event, event_id, type_, account, livemode,
                                            created, self.body.decode("utf-8"), process)
        except Exception as exc:  # anything but stored-for-sure makes Stripe retry
            self.metrics.webhooks.labels("store_failed").inc()
            raise APIError(503, "the event could not be stored; please retry",
                           code="unavailable",
                           reason_for_log=f"storing {event_id} failed: {type(exc).__name__}: "
                                          f"{str(exc)[:200]}") from None
        if stored and process:
            self.events.submit(event_id)
        self.metrics.webhooks.labels("stored" if stored else "duplicate").inc()
        log.debug("event %s %s %s/%s%s", event_id, type_, account or "platform",
                 "live" if livemode else "test", "" if stored else " (duplicate)")
        self.write_json({"received": True, "duplicate": not stored})
