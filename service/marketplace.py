"""Installs started from the App Marketplace: the install callback without a `state`.

A user who installs from the Marketplace, not from our `/install` link, is redirected to the
callback with `user_id`, `account_id` and `install_signature` (and `livemode=false` in test mode)
but no `state`. The signature then covers the compact JSON `{"user_id":...,"account_id":...}`, in
that order (Stripe: "the signature also includes the passed state, if provided"). One that does
not verify is 401 and records nothing.

One that verifies proves less than it seems: it is the very string the UI extension's
`fetchStripeSignature()` signs with no payload, so any user of the account, of any role, can
make one, and nothing binds it to a browser or to an install. So it installs nothing by itself
(issue 23): it records a pending install (`Change.PENDING`, dated by the signature's timestamp,
so it never touches an uninstall recorded after it), which takes effect only once Stripe
confirms it: the Install API answers that the app is installed on that account in that mode
(asked at once when a platform key for the mode is set: `InstallSync.confirm`), or the
`account.application.authorized` / `apps.install.created` event arrives. Each signature is
accepted once (`models.used_signatures.record_signature`).
"""

from __future__ import annotations

from models.installation import Change, InstallChange
from service.base import APIError
from service.config import Config
from service.signatures import SignatureError, canonical_identity, header_timestamp, verify


def verify_marketplace(config: Config, user_id: str, account_id: str, signature: str) -> int:
    """The signature's timestamp; a 401 `APIError` unless `signature` signs
    `{"user_id","account_id"}` within the tolerance."""
    try:
        verify(canonical_identity(user_id, account_id), signature, config.app_secrets,
               config.signature_tolerance)
        return header_timestamp(signature)
    except SignatureError as exc:
        raise APIError(401, "the install signature is not valid", code="bad_signature",
                       reason_for_log=f"marketplace install signature for {account_id}: "
                       f"{exc}") from None


def marketplace_change(account_id: str, user_id: str, mode: str, signed_at: int) -> InstallChange:
    """The change a verified Marketplace callback asks for: pending until Stripe confirms."""
    return InstallChange(account_id, mode, Change.PENDING, signed_at, "marketplace",
                         user_id=user_id)
