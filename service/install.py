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
- without `state`, an install started from the App Marketplace: it is pending until Stripe
  confirms it (service/marketplace.py);
- 401 when `install_signature` does not verify over `{"state","user_id","account_id"}` with an
  app secret (rotation as for signed requests) within the tolerance;
- 403 when the state is unknown, expired, used, or was issued to another browser;
- 403 `signature_used` when the install signature was accepted before (each is accepted once,
  on every replica: `models.used_signatures.record_signature`);
- otherwise the state is used up (its nonce recorded, so a second use is refused) and the
  installation for (account, mode) takes effect at once (`Change.LINK`), dated by the
  signature's timestamp: an uninstall recorded after that moment is never undone by it.
  Its mode is not signed by Stripe, so it is provisional (`confirmed` false) until the
  `authorized` event or the Install API agrees; when the Install API has the install in the
  other mode instead, the claimed mode is undone and the other one installed.
  The mode is test when `livemode=false` and live otherwise, as Stripe's redirect adds
  `livemode=false` only outside live mode. With the sandbox mode configured, `livemode=false`
  may as well be a sandbox install (Stripe's redirect carries no sandbox flag): then nothing
  takes effect at once (`Change.PENDING`, as a Marketplace install) and the Install API (asked
  with the test and the sandbox keys), the event or the sync place it where Stripe has it.
  With `livemode` absent, live is assumed and the answer says so (`mode_assumed`): a wrong
  guess can lose nothing, since the live row it activates was inactive and so held no app
  data, and crosses no account, since the account is signed and a live key acts only where
  the app is installed live (Stripe refuses the rest, and the jobs pause); the Install API,
  the daily sync or an operator undoes it.

Whenever a platform key for the mode is set, the callback asks the Install API at once, for at
most `jobs.installs.CONFIRM_TIMEOUT` seconds (`InstallSync.confirm`), so that the common case
is confirmed before the page is shown. Then, when the app is active, a redirect to
`INSTALL_SUCCESS_URL` (configuration, never the request) or a success page; when it waits for
Stripe, a 202 "pending" page; when Stripe contradicts it, or an uninstall newer than the
signature stands, a 409 page saying nothing was installed. Answers are HTML pages for browsers
(`Accept: text/html`) and JSON for everything else.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from models.enums import Mode
from models.install_state import use_state
from models.installation import Change, InstallationView, InstallChange, Outcome, Refused
from models.used_signatures import record_signature, signature_key
from service.base import APIError, BaseHandler
from service.ids import ACCOUNT_ID, USER_ID
from service.marketplace import marketplace_change, verify_marketplace
from service.signatures import (
    SignatureError,
    canonical_identity,
    header_timestamp,
    install_signed_string,
    verify,
)
from service.state_token import STATE_TTL, CheckedState, StateTokens

if TYPE_CHECKING:
    pass

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


def _once(signed_at: int, signed: str, account_id: str, tolerance: int,
          checked: CheckedState | None = None) -> Callable[[], str | None]:
    """The precondition of a callback's change (run in its transaction): use the state, when
    there is one, and the signature; a reason when either was used before."""
    key = signature_key(signed_at, signed.encode())

    def use() -> str | None:
        if checked is not None and not use_state(checked.nonce, checked.expires_at, account_id):
            return "state already used"
        if not record_signature(key, signed_at + tolerance + 1):
            return "signature already used"
        return None
    return use


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
        tolerance = self.config.signature_tolerance
        if state is None:  # started from the App Marketplace (service/marketplace.py)
            signed_at = verify_marketplace(self.config, user_id, account_id, signature)
            change = marketplace_change(account_id, user_id, mode, signed_at)
            once = _once(signed_at, canonical_identity(user_id, account_id), account_id,
                         tolerance)
        else:
            signed = install_signed_string(state, user_id, account_id)
            try:
                verify(signed, signature, self.config.app_secrets, tolerance)
                signed_at = header_timestamp(signature)
            except SignatureError as exc:
                raise APIError(401, "the install signature is not valid", code="bad_signature",
                               reason_for_log=f"install signature for {account_id}: {exc}"
                               ) from None
            checked = StateTokens(self.config.app_secrets).check(state, self.get_cookie(COOKIE))
            if checked.reason is not None:
                raise self._bad_state(checked.reason, account_id)
            # `livemode=false` is a test install or a sandbox install alike: with a sandbox
            # configured the link's mode is a guess, so nothing takes effect (no test-mode job
            # runs with the test key for a sandbox's account) until Stripe says where it is.
            ambiguous = mode == Mode.TEST and self.config.sandbox_configured
            change = InstallChange(account_id, mode,
                                   Change.PENDING if ambiguous else Change.LINK, signed_at,
                                   "callback", user_id=user_id)
            once = _once(signed_at, signed, account_id, tolerance, checked)
        try:
            outcome = await self.installations.apply(change, once)
        except Refused as exc:
            if exc.reason == "state already used":
                raise self._bad_state(exc.reason, account_id) from None
            raise APIError(403, "this install signature was used already; please start the "
                           "installation again", code="signature_used",
                           reason_for_log=f"install signature replayed ({account_id})") from None
        outcome = await self._confirm(outcome)
        self.clear_cookie(COOKIE, path="/")
        self._answer(outcome.view, livemode is None)

    @staticmethod
    def _bad_state(reason: str, account_id: str) -> APIError:
        return APIError(403, "this install link has expired or was not started in this "
                        "browser; please start the installation again",
                        code="bad_state", reason_for_log=f"{reason} ({account_id})")

    async def _confirm(self, outcome: Outcome) -> Outcome:
        """Ask the Install API at once (bounded) whether Stripe agrees, when it can be asked
        and Stripe has not agreed yet."""
        sync = self.install_sync
        view = outcome.view
        if sync is None or view.confirmed or not (view.active or view.pending):
            return outcome
        return await sync.confirm(view.account_id, view.mode, view.installed_by) or outcome

    def _answer(self, view: InstallationView, mode_assumed: bool) -> None:
        account_id, mode = view.account_id, view.mode
        data: dict[str, Any] = {"installed": view.active, "account_id": account_id,
                                "mode": str(mode), "confirmed": view.confirmed,
                                "pending": view.pending}
        if view.active:
            log.info("installed for %s in %s mode by %s%s", account_id, mode, view.installed_by,
                     "" if view.confirmed else " (mode provisional)")
            if self.config.install_success_url:
                self.redirect(self.config.install_success_url)
                return
            text = (f"The app is now installed on account {account_id} in {mode} mode. You can "
                    "close this page and return to the Stripe Dashboard.")
            if not view.confirmed:
                data["mode_assumed"] = mode_assumed
                text += (" Stripe has not confirmed the mode yet"
                         + (" (the link did not say which, so live mode is assumed)"
                            if mode_assumed else "")
                         + "; if Stripe reports another, this is undone.")
            self.page(200, "The app is installed", text, data)
        elif view.pending:
            log.info("install for %s in %s mode pending Stripe's confirmation", account_id, mode)
            self.page(202, "Installation pending",
                      f"Stripe has not confirmed the installation on account {account_id} in "
                      f"{mode} mode yet. It takes effect as soon as Stripe does, usually within "
                      "a minute. You can close this page and return to the Stripe Dashboard.",
                      data)
        else:
            log.info("install for %s in %s mode not taken: Stripe contradicts it, or an "
                     "uninstall newer than its signature stands", account_id, mode)
            self.page(409, "The app was not installed",
                      f"Stripe does not show the app installed on account {account_id} in "
                      f"{mode} mode, or it was uninstalled after this link was made. Nothing "
                      "was installed; you can start again from the install link.",
                      {"error": {"code": "not_installed",
                                 "message": f"Stripe does not show the app installed on "
                                 f"{account_id} in {mode} mode, or it was uninstalled after "
                                 "the install signature was made"}})
