"""The baseline: a bare Tornado handler that does only `stripe.WebhookSignature.verify_header`.

    python bench/bare_verify_server.py PORT SECRET
"""

from __future__ import annotations

import asyncio
import sys

import stripe
import tornado.web


class Bare(tornado.web.RequestHandler):
    def post(self) -> None:
        try:
            stripe.WebhookSignature.verify_header(
                self.request.body, self.request.headers.get("Stripe-Signature"), SECRET, 300)
        except stripe.SignatureVerificationError:
            self.set_status(401)
            self.finish(b'{"ok":false}')
            return
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"ok":true}')


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(b"ok")


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/bare", Bare), (r"/healthz", Health)])
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    SECRET = sys.argv[2]
    asyncio.run(main(int(sys.argv[1])))
