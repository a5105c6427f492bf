"""The status page in a real browser (Playwright driving Debian's chromium), as an operator
uses it: log in, see an install made through the API, replay a failed event, resume a paused
account (issue 16). `STATUS_SCREENSHOT=docs/status.png` also saves the page as the README
shows it."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from conftest import ROOT, WH_LIVE, base_env, event, running
from test_status import TOKEN, Flaky, registry

from models.events import WebhookEvent
from models.installation import set_paused

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.skip("chromium is not installed and could not be (.ci/run runs "
                    "apt-get install -y chromium); Playwright cannot download its own browser "
                    "without the internet")
    return path


async def seed_history(app) -> None:
    """A day of webhook traffic, for a screenshot that shows the chart."""
    now = time.time()
    rows = []
    for hour in range(24):
        for i in range(5 + (hour * 7) % 11):
            status = "failed" if (hour + i) % 13 == 0 else "processed"
            rows.append({"id": f"evt_hist_{hour}_{i}", "type": "invoice.paid",
                         "account_id": "acct_history", "livemode": False, "created": int(now),
                         "payload": "{}", "received_at": now - hour * 3600 - i,
                         "status": status if hour else "processed",
                         "last_error": "HTTPError: 502 from the app's CRM"
                         if status == "failed" else None, "attempts": 1})
    await app.backend.storage.run(lambda: WebhookEvent.insert_many(rows).execute())


@pytest.mark.gen_test(timeout=120)
async def test_operator_in_a_browser(tmp_path):
    executable = chromium()
    from playwright.async_api import async_playwright, expect

    async with running(base_env(tmp_path, OPERATOR_TOKEN=TOKEN), registry=registry()) as app:
        Flaky.fail = True
        # an install through the API (the signed webhook), a failing event, a paused account
        for account in ("acct_browser", "acct_paused"):
            resp = await app.webhook(event("account.application.authorized", account=account))
            assert resp.status_code == 200
        resp = await app.webhook(event("customer.created", account="acct_browser",
                                       event_id="evt_browser_fails"), WH_LIVE)
        assert resp.status_code == 200
        await app.settle()
        view = await app.backend.storage.run(set_paused, "acct_paused", "live", True,
                                             "Stripe revoked access (permission_error)")
        app.backend.installations.put(view)
        screenshot = os.environ.get("STATUS_SCREENSHOT")
        if screenshot:
            await seed_history(app)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=executable)
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            # not logged in: the page sends us to the form
            await page.goto(f"{app.url}/status")
            assert page.url.endswith("/status/login")
            await page.fill("#token", "not-the-token-at-all")
            await page.click("button[type=submit]")
            await expect(page.get_by_role("alert")).to_contain_text("not the operator token")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            assert page.url == f"{app.url}/status"
            cookies = {c["name"]: c for c in await page.context.cookies()}
            session = cookies["status_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict"

            installs = page.locator("#installations")
            await expect(installs).to_contain_text("acct_browser")
            await expect(installs.locator(".figure").first).to_contain_text("2active in live")
            await expect(page.locator("#webhooks svg")).to_be_visible()
            problems = page.locator("#webhooks tr", has_text="evt_browser_fails")
            await expect(problems).to_contain_text("unavailable")
            # the doctor's findings, on demand
            await page.click("text=Run the checks again")
            await expect(page.get_by_role("status")).to_have_text("The doctor's checks ran again.")
            await expect(page.locator("#health")).to_contain_text("migrations are current")
            if screenshot:
                await page.screenshot(path=os.path.join(ROOT, screenshot), full_page=True)

            # replay the failed event, now that its handler works
            Flaky.fail = False
            await page.click("button[aria-label='replay evt_browser_fails']")
            await expect(page.get_by_role("status")).to_have_text(
                "Event evt_browser_fails replayed: processed.")
            await expect(page.locator("#webhooks")).not_to_contain_text("evt_browser_fails")

            # resume the paused account
            await page.click("button[aria-label='resume acct_paused live']")
            await expect(page.get_by_role("status")).to_have_text(
                "Jobs resumed for acct_paused (live).")
            await expect(page.locator("#installations")).to_contain_text("No paused accounts.")
            await browser.close()
        row = await app.backend.storage.run(WebhookEvent.get_by_id, "evt_browser_fails")
        assert row.status == "processed"
        assert not app.backend.installations.get("acct_paused", "live").jobs_paused
