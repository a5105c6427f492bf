"""Install links: `GET /install` and the callback Stripe redirects back to.

`GET /install` -> 302 to `https://marketplace.stripe.com/apps/install/link/<STRIPE_APP_ID>`
with `redirect_uri=<STRIPE_INSTALL_REDIRECT_URI>` and a fresh `state`: a signed token
(service/state_token.py), expiring after 10 minutes, bound to this browser by an HttpOnly,
SameSite=Lax cookie (Secure when the callback is https), and written nowhere: an
unauthenticated request writes nothing to the database. 503 without `STRIPE_APP_ID` or
`STRIPE_APP_SECRETS`.

`GET <callback path>` (from `STRIPE_INSTALL_REDIRECT_URI`, `/callback/stripe` by default):
- `error`/`error_description` (the user cancelled): 400 page, nothing recorded, state unused;
- 400 for a missing, repeated or malformed parameter (`user_id`, `account_id`,
  `install_signature`, optional `state` and `livemode=true|false`);
- without `state`, an install started from the App Marketplace: see service/marketplace.py;
- 401 when `install_signature` does not verify over `{"state","user_id","account_id"}` with an
  app secret (rotation as for signed requests) within the tolerance;
- 403 when the state is unknown, expired, used, or was issued to another browser;
- otherwise the state is used up (its nonce recorded, so a second use is refused) and the
  installation for (account, mode) recorded: mode is
  test when `livemode=false`, live otherwise; the `authorized` webhook confirms it. Then a
  redirect to `INSTALL_SUCCESS_URL` (configuration, never the request) or a success page.
Answers are HTML pages for browsers (`Accept: text/html`) and JSON for everything else.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from models.db import write_transaction
from models.install_state import use_state
from models.installation import InstallationView, apply_state
from service.base import APIError, BaseHandler
from service.ids import ACCOUNT_ID, USER_ID
from service.marketplace import record_marketplace_install, verify_marketplace
from service.signatures import SignatureError, install_signed_string, verify
from service.state_token import STATE_TTL, CheckedState, StateTokens

log = logging.getLogger("app.install")

COOKIE = "stripe_app_install"
INSTALL_BASE = "https://marketplace.stripe.com/apps/install/link/"
_PARAM = {
    "state": re.compile(r"[A-Za-z0-9_\-]{16,128}"),
    "user_id": USER_ID,
    "account_id": ACCOUNT_ID,
    "install_signature": re.compile(r"[ -~]{1,2000}"),
}


def install_link(app_id: str, redirect_uri: str, state: str) -> str:
    return INSTALL_BASE + app_id + "?" + urlencode({"redirect_uri": redirect_uri, "state": state})


class PageMixin(BaseHandler):
    """Answers a person (HTML) or a program (JSON), errors included."""

    def wants_json(self) -> bool:
        return "text/html" not in self.request.headers.get("Accept", "")

    def page(self, status: int, title: str, text: str, data: dict[str, Any]) -> None:
        if self.wants_json():
            self.write_json(data, status)
            return
        self.write_html(
            "<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:36em;"
            "margin:4em auto;line-height:1.5}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>", status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if self.wants_json() or not isinstance(exc, APIError):
            super().write_error(status_code, **kwargs)
            return
        self.page(status_code, "The app could not be installed", exc.message, {})


class InstallHandler(PageMixin):
    SUPPORTED_METHODS = ("GET",)

    async def get(self) -> None:
        if not self.config.app_id or not self.config.app_secrets:
            raise APIError(503, "installing is not configured on this server",
                           code="not_configured",
                           reason_for_log="STRIPE_APP_ID or STRIPE_APP_SECRETS unset")
        token = self.get_cookie(COOKIE)
        if not token or not re.fullmatch(r"[A-Za-z0-9_\-]{32,64}", token):
            token = secrets.token_urlsafe(32)
        state = StateTokens(self.config.app_secrets).issue(token)  # nothing written
        self.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Lax",
                        secure=self.config.cookie_secure, max_age=STATE_TTL)
        self.redirect(install_link(self.config.app_id, self.config.install_redirect_uri, state))


def _complete(checked: CheckedState, account_id: str, user_id: str,
              mode: str) -> tuple[str | None, InstallationView | None]:
    """Runs in a database thread: use the state and record the installation, atomically."""
    if checked.reason is not None:
        return checked.reason, None
    with write_transaction():
        reason = None
        if not use_state(checked.nonce, checked.expires_at, account_id):
            reason = "state already used"
        if reason is not None:
            return reason, None
        view, _ = apply_state(account_id, mode, True, int(time.time()), source="callback",
                              user_id=user_id)
        return None, view


class CallbackHandler(PageMixin):
    SUPPORTED_METHODS = ("GET",)

    def one(self, name: str, required: bool = True) -> str | None:
        values = self.request.query_arguments.get(name, [])
        if len(values) > 1:
            raise APIError(400, f"the parameter {name} was given more than once")
        if not values:
            if required:
                raise APIError(400, f"the parameter {name} is missing")
            return None
        try:
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(400, f"the parameter {name} is not valid text") from None
        pattern = _PARAM.get(name)
        if pattern and not pattern.fullmatch(value):
            raise APIError(400, f"the parameter {name} is malformed")
        return value

    async def get(self) -> None:
        if not self.config.app_secrets:
            raise APIError(503, "installing is not configured on this server",
                           code="not_configured", reason_for_log="STRIPE_APP_SECRETS unset")
        error = self.one("error", required=False)
        if error is not None:
            description = self.one("error_description", required=False) or ""
            log.info("install cancelled at Stripe: %s", error[:100])
            self.page(400, "Installation cancelled",
                      f"Stripe reported: {description[:300] or error[:100]}. Nothing was "
                      "installed; you can start again from the install link.",
                      {"error": {"code": "install_cancelled", "message": description[:300]
                                 or error[:100]}})
            return
        state, user_id = self.one("state", required=False), self.one("user_id")
        account_id, signature = self.one("account_id"), self.one("install_signature")
        livemode = self.one("livemode", required=False)
        if livemode not in (None, "true", "false"):
            raise APIError(400, "the parameter livemode must be true or false")
        mode = "test" if livemode == "false" else "live"
        assert user_id and account_id and signature
        if state is None:  # started from the App Marketplace (service/marketplace.py)
            verify_marketplace(self.config, user_id, account_id, signature)
            view = await self.storage.run(record_marketplace_install, account_id, user_id, mode)
        else:
            try:
                verify(install_signed_string(state, user_id, account_id), signature,
                       self.config.app_secrets, self.config.signature_tolerance)
            except SignatureError as exc:
                raise APIError(401, "the install signature is not valid", code="bad_signature",
                               reason_for_log=f"install signature for {account_id}: {exc}"
                               ) from None
            checked = StateTokens(self.config.app_secrets).check(state, self.get_cookie(COOKIE))
            reason, completed = await self.storage.run(
                _complete, checked, account_id, user_id, mode)
            if reason is not None or completed is None:
                raise APIError(403, "this install link has expired or was not started in this "
                               "browser; please start the installation again",
                               code="bad_state", reason_for_log=f"{reason} ({account_id})")
            view = completed
        self.installations.put(view)
        self.clear_cookie(COOKIE, path="/")
        log.info("installed for %s in %s mode by %s", account_id, mode, user_id)
        if self.config.install_success_url:
            self.redirect(self.config.install_success_url)
            return
        self.page(200, "The app is installed",
                  f"The app is now installed on account {account_id} in {mode} mode. You can "
                  "close this page and return to the Stripe Dashboard.",
                  {"installed": True, "account_id": account_id, "mode": mode})
