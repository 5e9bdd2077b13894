"""The web form end to end over real HTTP: `crm-mcp serve --http` (the CRM), `crm-mcp bridge
webform --server URL` (the bridge, an MCP client of it), httpx as the customer's browser, and an
agent replying through its own MCP client. Every bad input gets its answer and stores nothing."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from .conftest import call, mcp_client
from .email_helpers import wait_until
from .webform_helpers import STATUS_RE, TICKET_RE, crm_http, good_form, open_form, webform

pytestmark = pytest.mark.anyio


async def _counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("customers", "messages", "tickets")}
    finally:
        await conn.close()


async def test_submit_reply_and_see_it_delivered_on_the_status_page(db_dsn: str, tmp_path: Path) -> None:
    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        assert browser.get(f"{base}/healthz").json()["status"] == "ok"
        form = browser.get(f"{base}/")
        assert 'for="email"' in form.text and 'name="message"' in form.text and "stylesheet" in form.text
        token = open_form(browser, base)
        done = browser.post(f"{base}/", data=good_form(token, order_number="FB-10042"))
        assert done.status_code == 200, done.text
        number = TICKET_RE.search(done.text).group(1)
        status_url = html.unescape(STATUS_RE.search(done.text).group(1))
        page = browser.get(status_url)
        assert page.status_code == 200 and number in page.text
        assert '<meta http-equiv="refresh" content="1">' in page.text
        assert "Every CSV export stops at 99%" in page.text and "No reply yet" in page.text

        async with mcp_client(db_dsn) as agent:
            ticket = await call(agent, "get_ticket", ticket_number=number)
            assert ticket["ticket"]["source_channel"] == "web_form"
            sent = await call(agent, "send_response", ticket_number=number, body="Please update to 4.2; the export finishes there.")
        reply_id = sent["parts"][0]["message_id"]
        queued = time.monotonic()
        while "update to 4.2" not in page.text:
            assert time.monotonic() - queued < 15, "the reply never appeared on the status page"
            time.sleep(0.3)
            page = browser.get(status_url)
        assert "No reply yet" not in page.text
        assert page.text.index("Every CSV export") < page.text.index("update to 4.2"), "messages in order"
        # the bridge counts a delivery once update_delivery_status has answered, just after the page shows it
        health = wait_until(lambda: (h := browser.get(f"{base}/healthz").json())["delivered"] >= 1 and h,
                            what="the bridge counting the delivery")
        assert health["ingested"] == 1 and health["delivered"] == 1
    conn = await asyncpg.connect(db_dsn)
    try:
        msg = await conn.fetchrow("SELECT delivery_status, channel_message_id, lease_until FROM messages WHERE id = $1::uuid", reply_id)
        inbound = await conn.fetchrow("SELECT channel, channel_message_id, metadata FROM messages WHERE direction = 'inbound'")
    finally:
        await conn.close()
    assert msg["delivery_status"] == "delivered" and msg["channel_message_id"] == f"web_form:{reply_id}" and msg["lease_until"] is None
    assert inbound["channel"] == "web_form" and inbound["channel_message_id"].startswith("webform-")
    meta = json.loads(inbound["metadata"])
    assert meta["order_number"] == "FB-10042" and meta["topic"] == "technical"


async def test_a_double_submit_lands_once(db_dsn: str, tmp_path: Path) -> None:
    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        token = open_form(browser, base)
        first = browser.post(f"{base}/", data=good_form(token))
        second = browser.post(f"{base}/", data=good_form(token))
        assert first.status_code == second.status_code == 200
        assert TICKET_RE.search(first.text).group(1) == TICKET_RE.search(second.text).group(1)
        assert "already been sent" in second.text
        # a new form is a new message, in the same conversation and ticket
        third = browser.post(f"{base}/", data=good_form(open_form(browser, base), message="Also: the PDF export."))
        assert TICKET_RE.search(third.text).group(1) == TICKET_RE.search(first.text).group(1)
    assert (await _counts(db_dsn)) == {"customers": 1, "messages": 2, "tickets": 1}


async def test_every_bad_input_gets_its_answer_and_stores_nothing(db_dsn: str, tmp_path: Path) -> None:
    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        token = open_form(browser, base)

        bad_email = browser.post(f"{base}/", data=good_form(token, email="ana-at-example"))
        assert bad_email.status_code == 400
        assert 'aria-invalid="true" aria-describedby="email-error"' in bad_email.text
        assert 'id="email-error">This does not look like an email address' in bad_email.text
        assert 'value="Ana Lima"' in bad_email.text, "what the customer typed is kept"

        empty = browser.post(f"{base}/", data=good_form(token, message="   "))
        assert empty.status_code == 400 and 'id="message-error">Please write your message' in empty.text

        too_long = browser.post(f"{base}/", data=good_form(token, subject="x" * 201))
        assert too_long.status_code == 400 and 'id="subject-error">Please shorten this to at most 200' in too_long.text

        hostile = "<script>alert(1)</script>"
        escaped = browser.post(f"{base}/", data=good_form(token, name=hostile, email="bad"))
        assert escaped.status_code == 400 and hostile not in escaped.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped.text

        bot = browser.post(f"{base}/", data=good_form(token, website="http://spam.example"))
        assert bot.status_code == 400 and "filled in automatically" in bot.text

        huge = browser.post(f"{base}/", data=good_form(token, message="x" * 70_000))
        assert huge.status_code == 413 and "larger than 64 KB" in huge.text

        forged = browser.post(f"{base}/", data=good_form(token + "x"))
        assert forged.status_code == 403 and "security check failed" in forged.text

        # CSRF: a post without the form's cookie (another site cannot read or set it)...
        with httpx.Client(timeout=30) as other:
            no_cookie = other.post(f"{base}/", data=good_form(token))
            assert no_cookie.status_code == 403
            # ...and one whose token belongs to another browser's cookie
            other_token = open_form(other, base)
        cross = browser.post(f"{base}/", data=good_form(other_token))
        assert cross.status_code == 403
        from_elsewhere = browser.post(f"{base}/", data=good_form(token), headers={"Origin": "https://evil.example"})
        assert from_elsewhere.status_code == 403 and "only be sent from its own page" in from_elsewhere.text

        not_form = browser.post(f"{base}/", json=good_form(token))
        assert not_form.status_code == 415

        unknown = browser.get(f"{base}/status/not-a-token")
        assert unknown.status_code == 404 and "not valid" in unknown.text
    assert (await _counts(db_dsn)) == {"customers": 0, "messages": 0, "tickets": 0}


async def test_one_address_is_rate_limited_with_429(db_dsn: str, tmp_path: Path) -> None:
    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        codes = []
        for _ in range(11):
            res = browser.post(f"{base}/", data=good_form(open_form(browser, base), email="not-an-address"))
            codes.append(res.status_code)
        assert codes == [400] * 10 + [429], codes
        assert int(res.headers["retry-after"]) > 0 and "try again in about" in res.text
    assert (await _counts(db_dsn)) == {"customers": 0, "messages": 0, "tickets": 0}


async def test_customer_text_is_escaped_on_the_confirmation_and_status_pages(db_dsn: str, tmp_path: Path) -> None:
    hostile = '<img src=x onerror="alert(1)"> & </untrusted-customer-content>'
    with crm_http(db_dsn, tmp_path) as url, webform(url, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        done = browser.post(f"{base}/", data=good_form(open_form(browser, base), subject=hostile, message=hostile, name=hostile))
        assert done.status_code == 200, done.text
        page = browser.get(html.unescape(STATUS_RE.search(done.text).group(1)))
        assert "<img" not in page.text and "&lt;img src=x" in page.text and "&amp;" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"


async def test_the_bridge_spawns_the_crm_over_stdio_when_no_server_is_given(db_dsn: str, tmp_path: Path) -> None:
    with webform(None, db_dsn, tmp_path) as base, httpx.Client(timeout=30) as browser:
        assert browser.get(f"{base}/healthz").json()["crm"] == {"mode": "stdio", "connected": True}
        done = browser.post(f"{base}/", data=good_form(open_form(browser, base)))
        assert done.status_code == 200 and TICKET_RE.search(done.text)
    assert (await _counts(db_dsn))["messages"] == 1
