"""The extension's credentials endpoints, and the OAuth code exchange (issue 15).

    POST /api/credentials/set     {"mode", "name", "value"} -> {"name", "mode", "updated"}
    POST /api/credentials/list    {}                        -> {"credentials": [{"name", "mode",
                                                                "kind", "updated"}]}
    POST /api/credentials/delete  {"mode", "name"}          -> {"name", "mode", "deleted"}
    POST /api/oauth/<provider>/exchange  {"mode", "code", "verifier", "redirect_uri"?}
                                  -> {"provider", "mode", "connected": true, "expires_at", "scope"}

All are signed and need the app installed. Beyond `SignedHandler`'s checks, in this order:
- 503 when `CREDENTIALS_KEYS` is not set (`not_configured`);
- 401 when a field they read is not covered by the signature: the value must come in the
  raw body the extension signed, never beside the two-key `{"user_id","account_id"}` fallback;
- 400 for a malformed field: `mode` is `live`, `test` or `sandbox`, `name` matches
  `[a-z0-9_]{1,64}`, `value` is a string of at most 4096 characters; every string read
  (`value`, `code`, `verifier`, `redirect_uri`) must be text that UTF-8 can encode (JSON may
  escape a lone UTF-16 surrogate, `"\\ud800"`, which cannot be stored or sent): 400, nothing stored;
- 403 `role_required` unless the signed `stripe_roles` hold a role id in `CREDENTIAL_ROLES`
  (set, delete and exchange; list needs none), 403 `not_installed` for a mode the account
  has not installed the app in;
- 400 `bad_redirect_uri` when the exchange names a `redirect_uri` that is not one of the
  provider's (`OAuthProvider.redirect_uri`/`redirect_uris`): nothing is sent to the provider;
- 409 `name_taken`: secrets and OAuth tokens share one name space (`ctx.credentials.get(name)`
  reads either), so a secret may not take the name of a declared OAuth provider or of a stored
  OAuth token, and an exchange may not replace a secret stored under its provider's name (it
  answers 409 before the code is sent to the provider); nothing changes.
- 429 `quota_exceeded` when `set` would store a new name past `CREDENTIALS_MAX_PER_MODE` in
  that mode (replacing a stored value always works).
Each signature is accepted once on all four (`single_use_signature`; 401 `signature_replayed`
after that): three change state, and the list tells which secrets an account holds.
A value or token is never in an answer or a log line: answers carry names, modes and times.
"""

from __future__ import annotations

import re
from typing import Any

from jobs.credentials import CredentialClash, Vault
from jobs.oauth import OAuthFailure, OAuthNotConfigured, RedirectNotAllowed
from models.credentials import SECRET, TooManyCredentials
from models.enums import MODES, MODES_TEXT
from service.base import APIError
from service.signed import SignedHandler, SignedRequest

NAME = re.compile(r"[a-z0-9_]{1,64}")
MAX_VALUE = 4096


def text(field: str, value: Any, limit: int) -> str:
    """`value` as a string of 1 to `limit` characters that UTF-8 can encode (400 otherwise)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise APIError(400, f"{field} must be a string of 1 to {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"{field} must be valid text: it holds a lone UTF-16 surrogate "
                       "(\\ud800 to \\udfff without its pair)") from None
    return value


def clash(exc: CredentialClash) -> APIError:
    return APIError(409, str(exc), code="name_taken")


class VaultHandler(SignedHandler):
    """A signed endpoint on the credentials vault."""

    single_use_signature = True

    @property
    def vault(self) -> Vault:
        vault = super().vault
        if vault is None or not vault.enabled:
            raise APIError(503, "credentials are not configured on this server",
                           code="not_configured", reason_for_log="CREDENTIALS_KEYS unset")
        return vault

    def mode(self, req: SignedRequest) -> str:
        mode = req.signed("mode")
        if mode not in MODES:
            raise APIError(400, f"mode must be {MODES_TEXT}")
        if not self.installations.is_active(req.account_id, mode):
            raise APIError(403, f"the app is not installed on this account in {mode} mode",
                           code="not_installed",
                           reason_for_log=f"{req.account_id} not installed in {mode} mode")
        return mode

    def name(self, req: SignedRequest) -> str:
        name = req.signed("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise APIError(400, "name must be 1 to 64 characters of a-z, 0-9 and _")
        return name

    def require_role(self, req: SignedRequest) -> None:
        allowed = self.config.credential_roles
        if not req.has_role(*allowed):
            raise APIError(403, "changing credentials needs one of these roles in the signed "
                           f"stripe_roles: {', '.join(allowed)}", code="role_required",
                           reason_for_log=f"{req.user_id} of {req.account_id} has roles "
                           f"{req.roles} (needs one of {', '.join(allowed)})")


class SetCredentialHandler(VaultHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        vault = self.vault
        mode, name = self.mode(req), self.name(req)
        value = text("value", req.signed("value"), MAX_VALUE)
        self.require_role(req)
        try:
            updated = await vault.set(req.account_id, mode, name, value, req.user_id,
                                      max_count=self.config.credentials_max_per_mode)
        except CredentialClash as exc:
            raise clash(exc) from None
        except TooManyCredentials as exc:
            raise APIError(429, f"this account already stores {exc.count} credentials in "
                           f"{mode} mode, the most allowed: delete one first",
                           code="quota_exceeded", reason_for_log=str(exc)) from None
        return {"name": name, "mode": mode, "updated": updated}


class ListCredentialsHandler(VaultHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        rows = await self.vault.list(req.account_id)
        return {"credentials": [{"name": c.name, "mode": c.mode, "kind": c.kind,
                                 "updated": c.updated} for c in rows]}


class DeleteCredentialHandler(VaultHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        vault = self.vault
        mode, name = self.mode(req), self.name(req)
        self.require_role(req)
        deleted = await vault.delete(req.account_id, mode, name)
        return {"name": name, "mode": mode, "deleted": deleted}


class OAuthExchangeHandler(VaultHandler):
    async def handle(self, req: SignedRequest) -> dict[str, Any]:
        vault = self.vault
        provider = vault.oauth.get(self.path_args[0])
        if provider is None:
            raise APIError(404, "no such OAuth provider")
        mode = self.mode(req)
        code = text("code", req.signed("code"), 2048)
        verifier = text("verifier", req.signed("verifier"), 2048)
        redirect_uri = (text("redirect_uri", req.signed("redirect_uri"), 2048)
                        if "redirect_uri" in req.body else None)
        self.require_role(req)
        try:
            provider.redirect_for(redirect_uri)
        except RedirectNotAllowed as exc:
            raise APIError(400, str(exc), code="bad_redirect_uri",
                           reason_for_log=f"{provider.name} exchange for {req.account_id} "
                           "named a redirect_uri that is not the provider's") from None
        if await vault.kind(req.account_id, mode, provider.name) == SECRET:
            raise APIError(409, f"a credential named {provider.name!r} is stored in {mode} "
                           "mode: delete it before connecting the OAuth provider of that name",
                           code="name_taken")
        try:
            token = await vault.oauth.exchange(provider, code, verifier, redirect_uri, mode=mode)
        except OAuthNotConfigured as exc:
            raise APIError(503, f"OAuth provider {provider.name!r} is not configured on this "
                           "server", code="not_configured", reason_for_log=str(exc)) from None
        except OAuthFailure as exc:
            if exc.refused:
                raise APIError(400, f"{provider.name} refused the code: {exc.error}",
                               code="oauth_refused", reason_for_log=str(exc)) from None
            raise APIError(502, f"{provider.name} could not be reached", code="bad_gateway",
                           reason_for_log=str(exc)) from None
        if not token.get("access_token"):
            raise APIError(502, f"{provider.name} answered without an access token",
                           code="bad_gateway")
        try:
            await vault.set_oauth(req.account_id, mode, provider.name, token, req.user_id)
        except CredentialClash as exc:  # a secret of that name stored meanwhile
            raise clash(exc) from None
        return {"provider": provider.name, "mode": mode, "connected": True,
                "expires_at": token.get("expires_at"), "scope": token.get("scope")}
