"""`POST /api/bench/hello`: an `@endpoint` with a declared field and no `await` (the lean path)."""

from typing import Any

from stripe_app_backend import EndpointContext, SignedRequest, endpoint


@endpoint("/api/bench/hello", fields={"note": str})
async def hello(req: SignedRequest, ctx: EndpointContext) -> dict[str, Any]:
    return {"account_id": ctx.account_id, "note": req.body["note"], "mode": ctx.mode}
