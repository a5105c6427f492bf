"""Any `/api/...` path no route matches: a JSON 404 the UI extension can read.

A browser hides an answer without CORS from the extension, which would see only a network
error: so this answers 404 with CORS for every method, and its preflight (`OPTIONS`) like a
real endpoint's, so that the request itself is sent and its 404 read.
"""

from __future__ import annotations

from service.base import APIError, NotFoundHandler
from service.signed import SignedHandler


class ApiNotFoundHandler(SignedHandler):
    SUPPORTED_METHODS = NotFoundHandler.SUPPORTED_METHODS

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "OPTIONS":
            raise APIError(404, "no such endpoint")
