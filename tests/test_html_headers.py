"""No HTML page of the backend can be framed by another site (issue 23, "Frames"): every route
the application has is requested as a browser would (`Accept: text/html`), with each method it
supports, logged in and not, and every answer that is an HTML page must carry
`Content-Security-Policy: ... frame-ancestors 'none'` and `X-Frame-Options: DENY`."""

from __future__ import annotations

import re

import pytest
from conftest import base_env, running

from service.base import HTML_HEADERS

TOKEN = "Zx8Tq2Lw5Rb9Kd3Hn7Vc4Jf6Gm1Ps0Ya-Ue_Oi8Wk2Nt"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def sample_path(pattern: str) -> str:
    """A path the route `pattern` matches: each group and `.*` becomes `x`."""
    path = pattern.removesuffix("$")
    path = re.sub(r"\([^)]*\)(\{[^}]*\})?", "x", path).replace(".*", "x").replace("\\.", ".")
    assert re.fullmatch(pattern, path), f"derive a sample path for {pattern!r} by hand"
    return path


def is_html(resp) -> bool:
    """A page: an HTML body (Tornado labels an empty answer, a redirect's, text/html too)."""
    return resp.headers.get("content-type", "").startswith("text/html") and bool(resp.content)


def assert_unframeable(resp, what) -> None:
    csp = resp.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, what
    assert resp.headers.get("x-frame-options") == "DENY", what


@pytest.mark.gen_test(timeout=60)
async def test_every_html_page_refuses_to_be_framed(tmp_path):
    async with running(base_env(tmp_path, OPERATOR_TOKEN=TOKEN)) as app:
        rules = app.backend.app.wildcard_router.rules
        paths = {sample_path(rule.matcher.regex.pattern): rule.target for rule in rules}
        assert "/status" in paths and "/callback/stripe" in paths
        pages = set()
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path, handler in paths.items():
            for method in handler.SUPPORTED_METHODS:
                for auth in ({}, bearer):
                    resp = await app.client.request(method, path, headers={**BROWSER, **auth})
                    if is_html(resp):
                        assert_unframeable(resp, (method, path, resp.status_code))
                        pages.add((method, path, resp.status_code))
        # the install callback's pages: cancelled at Stripe, and a malformed callback
        for query in ("?error=access_denied&error_description=cancelled", "",
                      "?user_id=usr_1&account_id=acct_1&install_signature=x&state=" + "s" * 20):
            resp = await app.client.get(f"/callback/stripe{query}", headers=BROWSER)
            assert is_html(resp), query
            assert_unframeable(resp, query)
            pages.add(("GET", "/callback/stripe" + query[:6], resp.status_code))
        # the operator's pages: the log-in form, a failed log-in, and the status page itself
        resp = await app.client.post("/status/login", data={"token": "wrong"}, headers=BROWSER)
        assert resp.status_code == 401 and is_html(resp)
        assert_unframeable(resp, "failed log-in")
        resp = await app.client.post("/status/login", data={"token": TOKEN})
        assert resp.status_code == 303
        page = await app.client.get("/status", headers=BROWSER)
        assert page.status_code == 200 and is_html(page)
        assert_unframeable(page, "status page")
        assert {("GET", "/status", 200), ("GET", "/status/login", 200),
                ("GET", "/callback/stripe", 400)} <= pages, pages
        # the same values everywhere, from one place
        assert page.headers["content-security-policy"] == HTML_HEADERS["Content-Security-Policy"]
