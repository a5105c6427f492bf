"""OAuth 2 providers of third-party systems, declared in code; tokens kept in the vault.

Declare a provider at the top level of any module the loader walks (`models/loader.py`; found
like jobs):

    from jobs.oauth import OAuthProvider

    ACME = OAuthProvider(
        name="acme",                                   # also the credential's name in the vault
        token_url="https://auth.acme.example/oauth/token",
        client_id_env="ACME_CLIENT_ID",                # read from the environment at start-up
        client_secret_env="ACME_CLIENT_SECRET",
        redirect_uri="https://dashboard.stripe.com/apps-oauth/com.example.app",
        # any other redirect URI the extension may send (test mode's, say)
        redirect_uris=("https://dashboard.stripe.com/test/apps-oauth/com.example.app",),
        # optional: the client registered for sandbox installs, when it is another one
        sandbox_client_id_env="ACME_SANDBOX_CLIENT_ID",
        sandbox_client_secret_env="ACME_SANDBOX_CLIENT_SECRET",
    )

The UI extension runs the authorization step itself (the SDK's `createOAuthState` gives it a
`state` and a PKCE `challenge`/`verifier`) and sends the `code` and `verifier` it got back to the
signed `POST /api/oauth/<provider>/exchange`; `OAuthProviders.exchange` trades them at the token
URL (RFC 6749 section 4.1.3, with PKCE's `code_verifier`), `OAuthProviders.refresh` uses the
refresh token before the access token expires (section 6). Both go through Authlib's httpx
client (`AsyncOAuth2Client`): no hand-written token code. A provider whose client id or secret
variable is unset is "not configured" (the endpoint answers 503).

Sandboxes: a provider may declare a second client, `sandbox_client_id_env` and
`sandbox_client_secret_env` (both or neither), for installs in a sandbox (`Mode.SANDBOX`): a
provider may register the sandbox's redirect as a client of its own, with its own id and
secret. Exchange and refresh in sandbox mode then use that pair, and only it: unset, the
provider is not configured in sandbox mode (503), and the live pair is never sent instead. A
provider that declares no sandbox pair uses its one pair in every mode, as before sandboxes.

The `redirect_uri` sent with the code must be the one the authorization request used, so the
extension may send it; only the provider's own (`redirect_uri` and `redirect_uris`) are ever
sent to the token URL: any other raises `RedirectNotAllowed` before anything is sent.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# Recent Authlib prefers httpx2 and, on httpx (the one stripe-python uses), warns once at import,
# through a filter of its own that no setting silences: record it here instead of printing it
# at every start. Its client works the same on either.
with warnings.catch_warnings(record=True):
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.oauth2.rfc6749 import OAuth2Token

from jobs.http import TIMEOUT, USER_AGENT
from models.enums import Mode
from models.loader import DEFAULT_PACKAGES, load_modules

NAME = re.compile(r"[a-z0-9_]{1,64}")
#: A token is refreshed when it expires within this many seconds.
LEEWAY = 60


class OAuthFailure(RuntimeError):
    """The token endpoint could not be used; `refused` when it answered with an OAuth error
    (`error` holds its code, e.g. `invalid_grant`), otherwise it was unreachable or failed."""

    def __init__(self, message: str, *, refused: bool, error: str | None = None) -> None:
        super().__init__(message)
        self.refused = refused
        self.error = error


class OAuthNotConfigured(RuntimeError):
    """The provider's client id or secret variable is not set."""


class RedirectNotAllowed(ValueError):
    """A redirect URI that is not one of the provider's; `str(self)` is safe to show."""


@dataclass(frozen=True)
class OAuthProvider:
    name: str
    token_url: str
    client_id_env: str
    client_secret_env: str
    #: The redirect URI sent when the exchange names none; also an allowed one.
    redirect_uri: str | None = None
    #: The other redirect URIs an exchange may name (exactly, as registered at the provider).
    redirect_uris: tuple[str, ...] = ()
    #: How the client authenticates at the token URL (RFC 6749 section 2.3.1):
    #: `client_secret_basic` (HTTP Basic, the default) or `client_secret_post` (form fields).
    auth_method: str = "client_secret_basic"
    scope: str | None = None
    #: The variables of the client used for sandbox installs, when the provider registers the
    #: sandbox apart (both or neither; neither: the one client above serves every mode).
    sandbox_client_id_env: str | None = None
    sandbox_client_secret_env: str | None = None

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"OAuth provider name {self.name!r} must match [a-z0-9_]{{1,64}}")
        if (self.sandbox_client_id_env is None) != (self.sandbox_client_secret_env is None):
            raise ValueError(f"OAuth provider {self.name!r}: declare both "
                             "sandbox_client_id_env and sandbox_client_secret_env, or neither")

    def client_envs(self, mode: str | None = None) -> tuple[str, str]:
        """The client id and secret variables of `mode`: the sandbox pair in sandbox mode when
        the provider declares one, else the one pair."""
        if mode == Mode.SANDBOX and self.sandbox_client_id_env and self.sandbox_client_secret_env:
            return self.sandbox_client_id_env, self.sandbox_client_secret_env
        return self.client_id_env, self.client_secret_env


    @property
    def allowed_redirect_uris(self) -> tuple[str, ...]:
        """Every redirect URI an exchange may send: `redirect_uri`, then `redirect_uris`."""
        return ((self.redirect_uri,) if self.redirect_uri else ()) + tuple(self.redirect_uris)

    def redirect_for(self, requested: str | None) -> str | None:
        """The redirect URI to send: `requested` when it is one of the provider's (exactly),
        the default `redirect_uri` when none is requested; `RedirectNotAllowed` otherwise."""
        if requested is None:
            return self.redirect_uri
        if requested not in self.allowed_redirect_uris:
            raise RedirectNotAllowed(
                f"redirect_uri is not one of the OAuth provider {self.name!r}'s redirect URIs"
                + ("" if self.allowed_redirect_uris else " (it declares none)"))
        return requested


def expired(token: Mapping[str, Any], leeway: float = LEEWAY) -> bool:
    """True when the token expires within `leeway` seconds (never, without `expires_at`)."""
    return bool(OAuth2Token(dict(token)).is_expired(leeway=leeway))


class OAuthProviders:
    """The declared providers and their client credentials, read once from `env`."""

    def __init__(self, providers: Iterable[OAuthProvider] = (),
                 env: Mapping[str, str] | None = None, *,
                 timeout: httpx.Timeout = TIMEOUT) -> None:
        env = os.environ if env is None else env
        self.providers = {p.name: p for p in providers}
        #: (client id, secret) by variable names, for every pair a provider declares
        self._clients = {names: (env.get(names[0], "").strip(), env.get(names[1], "").strip())
                         for p in self.providers.values()
                         for names in {p.client_envs(), p.client_envs(Mode.SANDBOX)}}
        self.timeout = timeout

    @classmethod
    def from_modules(cls, modules: Iterable[Any], env: Mapping[str, str] | None = None
                     ) -> OAuthProviders:
        """Every `OAuthProvider` declared at the top level of one of `modules` (those
        `models.loader.load_modules` imported); two different ones of one name are refused."""
        found: dict[str, OAuthProvider] = {}
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, OAuthProvider):
                    if found.get(value.name, value) != value:
                        raise ValueError(f"two OAuth providers are named {value.name!r} (one "
                                         f"in {module.__name__})")
                    found[value.name] = value
        return cls(found.values(), env)

    @classmethod
    def discover(cls, packages: Iterable[str] = DEFAULT_PACKAGES,
                 env: Mapping[str, str] | None = None) -> OAuthProviders:
        """The providers of the modules of `packages` (the default: what the backend walks)."""
        return cls.from_modules(load_modules(packages), env)

    def get(self, name: str) -> OAuthProvider | None:
        return self.providers.get(name)

    def disabled(self) -> list[str]:
        """One log line per provider (and its sandbox pair, when declared) whose client
        variables are unset."""
        lines = [f"{p.client_id_env}/{p.client_secret_env} unset: OAuth provider {p.name!r} "
                 "answers 503" for p in self.providers.values()
                 if not all(self._clients[p.client_envs()])]
        lines += [f"{ids}/{secrets} unset: OAuth provider {p.name!r} answers 503 in sandbox mode"
                  for p in self.providers.values()
                  for ids, secrets in [p.client_envs(Mode.SANDBOX)]
                  if (ids, secrets) != p.client_envs() and not all(self._clients[ids, secrets])]
        return lines

    def _client(self, provider: OAuthProvider, mode: str | None = None,
                **kwargs: Any) -> AsyncOAuth2Client:
        names = provider.client_envs(mode)
        client_id, secret = self._clients[names]
        if not client_id or not secret:
            raise OAuthNotConfigured(f"{names[0]} and {names[1]} must be set for OAuth provider "
                                     f"{provider.name!r}"
                                     + (" in sandbox mode" if names != provider.client_envs()
                                        else ""))
        return AsyncOAuth2Client(
            client_id, secret, token_endpoint_auth_method=provider.auth_method,
            scope=provider.scope, token_endpoint=provider.token_url, timeout=self.timeout,
            headers={"User-Agent": USER_AGENT}, leeway=LEEWAY, **kwargs)

    async def exchange(self, provider: OAuthProvider, code: str, verifier: str,
                       redirect_uri: str | None = None, *, mode: str | None = None
                       ) -> dict[str, Any]:
        """Trade an authorization code and its PKCE verifier for a token (RFC 6749 4.1.3), as
        the client of `mode` (`OAuthProvider.client_envs`).

        `redirect_uri` must be one of the provider's (`RedirectNotAllowed`, nothing sent)."""
        redirect = provider.redirect_for(redirect_uri)
        async with self._client(provider, mode, redirect_uri=redirect) as client:
            try:
                token = await client.fetch_token(
                    provider.token_url, grant_type="authorization_code", code=code,
                    code_verifier=verifier)
            except Exception as exc:
                raise _failure(provider, exc) from None
        return dict(token)

    async def refresh(self, provider: OAuthProvider, token: Mapping[str, Any],
                      mode: str | None = None) -> dict[str, Any]:
        """The token, refreshed (RFC 6749 section 6) if it expires within `LEEWAY` seconds, as
        the client of `mode` (the one that obtained it).

        Authlib decides (`ensure_active_token`) and keeps the old refresh token when the
        provider does not send a new one.
        """
        fresh: dict[str, Any] = dict(token)

        async def keep(new: Mapping[str, Any], **_: Any) -> None:
            fresh.clear()
            fresh.update(new)

        async with self._client(provider, mode, token=dict(token), update_token=keep) as client:
            try:
                await client.ensure_active_token(client.token)
            except Exception as exc:
                raise _failure(provider, exc) from None
        return fresh


def _failure(provider: OAuthProvider, exc: Exception) -> OAuthFailure:
    """What went wrong at the token endpoint, without the token or the client secret."""
    if isinstance(exc, OAuthError):
        return OAuthFailure(f"{provider.name} refused the token request: {exc.error}",
                            refused=True, error=str(exc.error or "invalid_request"))
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return OAuthFailure(f"{provider.name} token endpoint answered {status}",
                            refused=False)
    if isinstance(exc, ValueError | KeyError):
        return OAuthFailure(f"{provider.name} token endpoint answered something that is not a "
                            "token", refused=False)
    # Authlib's client is httpx's or httpx2's: any other error is the transport's.
    return OAuthFailure(f"{provider.name} token endpoint unreachable: {type(exc).__name__}",
                        refused=False)
