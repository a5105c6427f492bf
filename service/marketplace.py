"""Installs started from the App Marketplace: the install callback without a `state`.

A user who installs from the Marketplace, not from our `/install` link, is redirected to the
callback with `user_id`, `account_id` and `install_signature` (and `livemode=false` in test mode)
but no `state`. The signature then covers the compact JSON `{"user_id":...,"account_id":...}`, in
that order (Stripe: "the signature also includes the passed state, if provided"). A signature
that verifies records the install in its mode, as the callback does for a link; one that does not
is 401 and records nothing. There is no browser binding to check: no state was issued.
"""

from __future__ import annotations

import time

from models.installation import InstallationView, apply_state
from service.base import APIError
from service.config import Config
from service.signatures import SignatureError, canonical_identity, verify


def verify_marketplace(config: Config, user_id: str, account_id: str, signature: str) -> None:
    """Raise a 401 `APIError` unless `signature` signs `{"user_id","account_id"}`."""
    try:
        verify(canonical_identity(user_id, account_id), signature, config.app_secrets,
               config.signature_tolerance)
    except SignatureError as exc:
        raise APIError(401, "the install signature is not valid", code="bad_signature",
                       reason_for_log=f"marketplace install signature for {account_id}: "
                       f"{exc}") from None


def record_marketplace_install(account_id: str, user_id: str, mode: str) -> InstallationView:
    """Runs in a database thread: record the install like a callback from an install link."""
    view, _ = apply_state(account_id, mode, True, int(time.time()), source="marketplace",
                          user_id=user_id)
    return view
