"""The web form in a real browser: Debian's chromium driven by playwright fills and submits the
form, follows the status link and sees the agent's reply appear (the page refreshes itself, no
JavaScript). Saves the README's screenshots to docs/screenshots/. In CI it must run; elsewhere it
is skipped only when /usr/bin/chromium is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import REPO, call, mcp_client
from .webform_helpers import crm_http, webform

pytestmark = pytest.mark.anyio
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SHOTS = REPO / "docs" / "screenshots"

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); CI installs it and runs this test",
                allow_module_level=True)


async def test_fill_submit_follow_the_status_link_and_see_the_reply(db_dsn: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path, refresh=1) as base:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 900, "height": 1000})
                await page.goto(f"{base}/")
                await page.get_by_label("Your name").fill("Ana Lima")
                await page.get_by_label("Email address").fill("ana@example.com")
                await page.get_by_label("Topic").select_option("technical")
                await page.get_by_label("Order number").fill("FB-10042")
                await page.get_by_label("Subject").fill("CSV export stops at 99%")
                await page.get_by_label("Message").fill("Every CSV export of my projects stops at 99%.\nI tried twice today.")
                SHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SHOTS / "webform.png"), full_page=True)
                await page.get_by_role("button", name="Send message").click()

                number = (await page.locator("#ticket-number").inner_text()).strip()
                assert number.startswith("TKT-")
                await page.locator("#status-link").click()
                await expect(page.locator("#status")).to_contain_text("Received")
                await expect(page.locator(".msg.mine")).to_contain_text("stops at 99%")

                async with mcp_client(db_dsn) as agent:
                    await call(agent, "send_response", ticket_number=number,
                               body="Thanks for the details. Version 4.2 fixes the export; update from Settings > About and run it again.")
                # no reload by the test: the page's meta refresh brings the reply in
                await expect(page.locator(".msg.reply")).to_contain_text("Version 4.2 fixes the export", timeout=20_000)
                await expect(page.locator("#status")).to_contain_text("In progress")
                await page.screenshot(path=str(SHOTS / "status.png"), full_page=True)
            finally:
                await browser.close()
    assert (SHOTS / "webform.png").stat().st_size > 10_000 and (SHOTS / "status.png").stat().st_size > 10_000
