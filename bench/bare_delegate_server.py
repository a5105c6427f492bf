"""The floor: Tornado's `HTTPServer` with a bare `httputil.HTTPMessageDelegate` that does only
`stripe.WebhookSignature.verify_header` and answers JSON (no `Application`, no handler).

    python bench/bare_delegate_server.py PORT SECRET
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import stripe
from tornado import httputil
from tornado.httpserver import HTTPServer

OK = b'{"ok":true}'
BAD = b'{"ok":false}'


class Bare(httputil.HTTPMessageDelegate):
    def __init__(self, conn: httputil.HTTPConnection, secret: str) -> None:
        self.conn, self.secret = conn, secret
        self.chunks: list[bytes] = []
        self.start_line: Any = None
        self.headers: httputil.HTTPHeaders | None = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        self.start_line, self.headers = start_line, headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        assert self.headers is not None
        if self.start_line.path == "/healthz":
            self._answer(200, b"ok")
            return
        try:
            stripe.WebhookSignature.verify_header(
                b"".join(self.chunks), self.headers.get("Stripe-Signature"), self.secret, 300)
        except stripe.SignatureVerificationError:
            self._answer(401, BAD)
            return
        self._answer(200, OK)

    def _answer(self, status: int, body: bytes) -> None:
        headers = httputil.HTTPHeaders({"Content-Type": "application/json",
                                        "Content-Length": str(len(body))})
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, "OK"), headers,
                                body)
        self.conn.finish()


class Delegates(httputil.HTTPServerConnectionDelegate):
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return Bare(request_conn, self.secret)


async def main(port: int, secret: str) -> None:
    HTTPServer(Delegates(secret)).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
