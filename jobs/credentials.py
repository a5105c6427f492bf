"""The credentials vault: per-account secrets for third-party systems, encrypted at rest.

    vault = Vault(storage, config.credentials_keys, oauth_providers)
    await vault.set(account, mode, "acme_api_key", value, user_id)      # the extension's set
    creds = vault.for_account(account, mode)                             # ctx.credentials
    await creds.get("acme_api_key")         # the plain value, or CredentialMissing

Values are Fernet tokens under `CREDENTIALS_KEYS` (`MultiFernet`: the first key encrypts,
every key decrypts, so a new key goes first and the old one stays until `run.py credentials
rotate` has re-encrypted everything). A value never reaches a log line, an answer or a metric:
errors name the account, mode and credential, never its value.

An OAuth credential (stored by `/api/oauth/<provider>/exchange`) holds the provider's token as
JSON; `get(provider)` answers its access token, refreshed first through the provider when it
expires within a minute (one refresh at a time per account, mode and provider in this process).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from jobs.oauth import OAuthFailure, OAuthNotConfigured, OAuthProviders, expired
from jobs.stripe_api import MissingKey
from models.credentials import (
    OAUTH,
    SECRET,
    KindClash,
    StoredCredential,
    delete_credential,
    fetch_credential,
    list_credentials,
    put_credential,
    rotate_all,
)
from models.db import Storage
from models.enums import MODES

log = logging.getLogger("app.credentials")


class CredentialMissing(LookupError):
    """The account has no usable credential of this name in this mode (or the vault is off).

    A job run that raises it is recorded as `not_configured` and not retried: only a person can
    fix it, by storing the credential from the extension.
    """


class CredentialsDisabled(CredentialMissing):
    """`CREDENTIALS_KEYS` is not set: the vault cannot encrypt or decrypt."""


class CredentialClash(ValueError):
    """A secret and an OAuth token would share a name: refused, nothing changed. Both live in
    one name space (`ctx.credentials.get(name)` reads either), so a secret may not take the name
    of a declared OAuth provider or of a stored OAuth token, and an OAuth token may not replace a
    secret stored under its provider's name. `str(self)` is safe to show to the caller."""


class CredentialUnreadable(RuntimeError):
    """No configured key decrypts the stored value (a key was removed before rotation)."""


#: What a run cannot do anything about until an operator or the account configures something:
#: no platform key for the mode, or a credential missing or unreadable. Recorded as
#: `not_configured` and not retried.
NOT_CONFIGURED = (MissingKey, CredentialMissing, CredentialUnreadable)


class Cipher:
    """Fernet under several keys: the first encrypts, every one decrypts."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise CredentialsDisabled("CREDENTIALS_KEYS is not configured")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plain value; ValueError (InvalidToken) when no key reads it."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise ValueError("no configured key decrypts this value") from None

    def rotate(self, token: str) -> str:
        """The same value encrypted under the first key; ValueError when no key reads it."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise ValueError("no configured key decrypts this value") from None


class Vault:
    """The credentials of every account, through `Storage`, encrypted with `Cipher`."""

    def __init__(self, storage: Storage, keys: Sequence[str],
                 oauth: OAuthProviders | None = None) -> None:
        self.storage = storage
        self._cipher = Cipher(keys) if keys else None
        self.oauth = oauth or OAuthProviders(())
        self._refreshing: dict[tuple[str, str, str], asyncio.Lock] = {}

    @property
    def enabled(self) -> bool:
        return self._cipher is not None

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            raise CredentialsDisabled("CREDENTIALS_KEYS is not configured: the credentials "
                                      "vault is off")
        return self._cipher

    def for_account(self, account_id: str, mode: str) -> AccountCredentials:
        return AccountCredentials(self, account_id, mode)

    # ---- what the extension's endpoints do ----------------------------------------------------
    async def set(self, account_id: str, mode: str, name: str, value: str,
                  updated_by: str | None = None, kind: str = SECRET,
                  max_count: int | None = None) -> int:
        """Store the value encrypted; returns the time it was stored (unix seconds). With
        `max_count`, a new name past that many in the mode raises `TooManyCredentials`.

        Raises `CredentialClash` for a secret named like a declared OAuth provider, or when the
        name holds a value of the other kind (an OAuth token or a secret)."""
        if kind == SECRET and name in self.oauth.providers:
            raise CredentialClash(f"the name {name!r} belongs to the OAuth provider {name!r}: "
                                  "choose another name for this credential")
        token = self.cipher.encrypt(value)
        try:
            return await self.storage.run(put_credential, account_id, mode, name, token, kind,
                                          updated_by, max_count)
        except KindClash as exc:
            if exc.kind == OAUTH:
                raise CredentialClash(f"{name!r} is an OAuth connection in {mode} mode: choose "
                                      "another name, or delete the connection first") from None
            raise CredentialClash(f"a credential named {name!r} is stored in {mode} mode: "
                                  "delete it before connecting the OAuth provider of that "
                                  "name") from None

    async def kind(self, account_id: str, mode: str, name: str) -> str | None:
        """The kind of the value stored under `name` (`secret` or `oauth`), or None."""
        found = await self.storage.run(fetch_credential, account_id, mode, name)
        return found[0] if found else None

    async def list(self, account_id: str, modes: tuple[str, ...] = MODES
                   ) -> list[StoredCredential]:
        return await self.storage.run(list_credentials, account_id, modes)

    async def delete(self, account_id: str, mode: str, name: str) -> bool:
        return await self.storage.run(delete_credential, account_id, mode, name)

    async def set_oauth(self, account_id: str, mode: str, provider: str,
                        token: dict[str, Any], updated_by: str | None = None) -> int:
        return await self.set(account_id, mode, provider, json.dumps(token), updated_by, kind=OAUTH)

    # ---- what jobs and handlers read ------------------------------------------------------------
    async def _read(self, account_id: str, mode: str, name: str) -> tuple[str, str]:
        cipher = self.cipher
        found = await self.storage.run(fetch_credential, account_id, mode, name)
        if found is None:
            raise CredentialMissing(f"credential {name!r} is not set for {account_id} in {mode} "
                                    "mode: store it from the extension (/api/credentials/set)")
        kind, token = found
        try:
            return kind, cipher.decrypt(token)
        except ValueError:
            raise CredentialUnreadable(
                f"credential {name!r} of {account_id}/{mode}: no key in CREDENTIALS_KEYS "
                "decrypts it (was its key removed before `run.py credentials rotate`?)") from None

    async def get(self, account_id: str, mode: str, name: str) -> str:
        kind, value = await self._read(account_id, mode, name)
        if kind != OAUTH:
            return value
        token = await self.oauth_token(account_id, mode, name, json.loads(value))
        return str(token["access_token"])

    async def oauth_token(self, account_id: str, mode: str, provider_name: str,
                          token: dict[str, Any] | None = None) -> dict[str, Any]:
        """The provider's current token for the account, refreshed if it is about to expire."""
        if token is None:
            kind, value = await self._read(account_id, mode, provider_name)
            if kind != OAUTH:
                raise CredentialMissing(f"credential {provider_name!r} is not an OAuth token")
            token = json.loads(value)
        if not expired(token):
            return token
        provider = self.oauth.get(provider_name)
        if provider is None:
            raise CredentialMissing(f"OAuth token {provider_name!r} of {account_id}/{mode} has "
                                    "expired and no provider of that name is declared")
        key = (account_id, mode, provider_name)
        lock = self._refreshing.setdefault(key, asyncio.Lock())
        async with lock:
            # Another caller may have refreshed it while this one waited.
            _, value = await self._read(account_id, mode, provider_name)
            token = json.loads(value)
            if not expired(token):
                return token
            if not token.get("refresh_token"):
                raise CredentialMissing(
                    f"OAuth token {provider_name!r} of {account_id}/{mode} has expired and "
                    "has no refresh token: connect the account again from the extension")
            try:
                fresh = await self.oauth.refresh(provider, token, mode)
            except OAuthNotConfigured as exc:
                raise CredentialMissing(str(exc)) from None
            except OAuthFailure as exc:
                if exc.refused:  # e.g. invalid_grant: the grant was revoked
                    raise CredentialMissing(
                        f"OAuth token {provider_name!r} of {account_id}/{mode} could not be "
                        f"refreshed ({exc.error}): connect the account again") from None
                raise
            await self.set_oauth(account_id, mode, provider_name, fresh, "oauth-refresh")
            log.info("refreshed the %s OAuth token of %s/%s", provider_name, account_id,
                     mode)
            return fresh

    # ---- operations --------------------------------------------------------------------------
    def rotate(self) -> tuple[int, builtins.list[str]]:
        """Synchronous (a database thread or the CLI): re-encrypt every value under the first
        key; returns (rows rewritten, `account/mode/name` of rows no key reads)."""
        return rotate_all(self.cipher.rotate)


class AccountCredentials:
    """`ctx.credentials`: one account's credentials in the run's mode (no vault: all missing).

    Every value it hands out is added to `revealed` (the context's), so that the run's error
    text can leave it out (`jobs/errors.py`)."""

    def __init__(self, vault: Vault | None, account_id: str, mode: str,
                 revealed: set[str] | None = None) -> None:
        self._vault, self.account_id, self.mode = vault, account_id, mode
        self.revealed: set[str] = set() if revealed is None else revealed

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            raise CredentialsDisabled("this process has no credentials vault")
        return self._vault

    async def get(self, name: str) -> str:
        """The credential's value (an OAuth provider's: its current access token).

        Raises `CredentialMissing` when it is not set (or the vault is off).
        """
        value = await self.vault.get(self.account_id, self.mode, name)
        self.revealed.add(value)
        return value

    async def oauth_token(self, provider: str) -> dict[str, Any]:
        """The provider's whole token (access_token, token_type, expires_at, scope...)."""
        token = await self.vault.oauth_token(self.account_id, self.mode, provider)
        self.revealed.update(str(token[k]) for k in ("access_token", "refresh_token", "id_token")
                             if token.get(k))
        return token

    def __repr__(self) -> str:
        return f"<credentials of {self.account_id}/{self.mode}>"

