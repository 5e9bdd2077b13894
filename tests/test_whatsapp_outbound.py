"""The WhatsApp bridge outbound, end to end: replies queued with send_response are claimed by
`crm-mcp bridge whatsapp` and sent to local stand-ins for Twilio and Meta, which check auth and
paths and answer as the real APIs do (429 with Retry-After, the window errors 63016 / 131047).
Status callbacks apply monotonically; outside the 24-hour window a template goes out, or the
reply is failed, noted and the ticket escalated; a bridge killed mid-send loses nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import httpx
import pytest

from .conftest import call, call_error, mcp_client
from .email_helpers import wait_until
from .webform_helpers import crm_http, stop_process
from .whatsapp_fakes import (
    META_ACCESS, TWILIO_NUMBER, fake_provider, meta_envelope, meta_text, provider_env, start_whatsapp, twilio_inbound,
    whatsapp,
)

pytestmark = pytest.mark.anyio


async def _row(dsn: str, sql: str, *args: object) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def _message(dsn: str, message_id: str) -> asyncpg.Record:
    row = await _row(dsn, "SELECT * FROM messages WHERE id = $1::uuid", message_id)
    assert row is not None
    return row


async def _wait_status(dsn: str, message_id: str, *statuses: str, timeout: float = 30.0) -> asyncpg.Record:
    deadline = time.monotonic() + timeout
    while True:
        row = await _message(dsn, message_id)
        if row["delivery_status"] in statuses:
            return row
        assert time.monotonic() < deadline, f"message stayed {row['delivery_status']} ({row['delivery_error']})"
        await anyio.sleep(0.2)


async def _reply(dsn: str, ticket: str, body: str) -> str:
    async with mcp_client(dsn) as agent:
        sent = await call(agent, "send_response", ticket_number=ticket, body=body)
    return sent["parts"][0]["message_id"]


async def _ticket(dsn: str, channel_message_id: str) -> str:
    row = await _row(dsn, "SELECT t.ticket_number FROM messages m JOIN tickets t ON t.id = m.ticket_id "
                          "WHERE m.channel_message_id = $1", channel_message_id)
    assert row is not None, f"{channel_message_id} was not stored"
    return row["ticket_number"]


def _twilio_status(wa: Any, http: httpx.Client, callback: str, sid: str, status: str, **extra: str) -> httpx.Response:
    parts = urlsplit(callback)
    return wa.post_twilio(http, parts.path, {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC", **extra},
                          query=parts.query)


async def test_twilio_reply_inside_the_window_and_status_callbacks(db_dsn: str, tmp_path: Path) -> None:
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, \
            whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa, httpx.Client(timeout=30) as http:
        assert wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "1" * 32, "+15551240001", "Where is my order?")).status_code == 200
        reply = await _reply(db_dsn, await _ticket(db_dsn, "SM" + "1" * 32), "It ships tomorrow.")
        [sent] = fake.wait_sends("twilio", 1)
        assert sent.body["From"] == f"whatsapp:{TWILIO_NUMBER}" and sent.body["To"] == "whatsapp:+15551240001"
        assert "It ships tomorrow." in sent.body["Body"]
        callback = sent.body["StatusCallback"]
        assert callback.startswith(f"{wa.base}/twilio/status?")
        assert parse_qs(urlsplit(callback).query) == {"message_id": [reply], "attempt": ["1"]}
        row = await _wait_status(db_dsn, reply, "sent")
        sid = row["channel_message_id"]
        assert sid.startswith("SM") and row["lease_until"] is None
        # out of order: read arrives before delivered; the late delivered and sent change nothing
        assert _twilio_status(wa, http, callback, sid, "queued").status_code == 200
        assert _twilio_status(wa, http, callback, sid, "read").status_code == 200
        assert (await _message(db_dsn, reply))["delivery_status"] == "read"
        for late in ("delivered", "sent", "undelivered"):
            assert _twilio_status(wa, http, callback, sid, late, ErrorCode="30008").status_code == 200
        assert (await _message(db_dsn, reply))["delivery_status"] == "read"
        # an unsigned callback is refused and changes nothing
        parts = urlsplit(callback)
        assert http.post(f"{wa.base}{parts.path}?{parts.query}", data={"MessageSid": sid, "MessageStatus": "failed"}).status_code == 403

        # a second reply; its status callbacks arrive in order, the last one carried by MessageSid alone
        second = await _reply(db_dsn, await _ticket(db_dsn, "SM" + "1" * 32), "Tracking number follows.")
        sent2 = fake.wait_sends("twilio", 2)[1]
        sid2 = (await _wait_status(db_dsn, second, "sent"))["channel_message_id"]
        assert _twilio_status(wa, http, sent2.body["StatusCallback"], sid2, "delivered").status_code == 200
        assert (await _message(db_dsn, second))["delivery_status"] == "delivered"
        assert wa.post_twilio(http, "/twilio/status", {"MessageSid": sid2, "MessageStatus": "read"}).status_code == 200
        assert (await _message(db_dsn, second))["delivery_status"] == "read"

        # Twilio accepts a send and reports 63016 later, in an undelivered callback: failed, noted, escalated
        third = await _reply(db_dsn, await _ticket(db_dsn, "SM" + "1" * 32), "And one more.")
        sent3 = fake.wait_sends("twilio", 3)[2]
        sid3 = (await _wait_status(db_dsn, third, "sent"))["channel_message_id"]
        assert _twilio_status(wa, http, sent3.body["StatusCallback"], sid3, "undelivered", ErrorCode="63016").status_code == 200
        row = await _message(db_dsn, third)
        assert row["delivery_status"] == "failed" and row["delivery_error"].startswith("Twilio 63016")
        t = await _row(db_dsn, "SELECT status FROM tickets WHERE ticket_number = $1", await _ticket(db_dsn, "SM" + "1" * 32))
        assert t["status"] == "escalated"


async def test_meta_reply_retries_a_429_and_applies_status_webhooks(db_dsn: str, tmp_path: Path) -> None:
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, \
            whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa, httpx.Client(timeout=30) as http:
        assert wa.post_meta(http, meta_envelope(messages=[meta_text("wamid.M1", "+15551240002", "Can I change plan?")])).status_code == 200
        fake.script = ["429"]
        t0 = time.monotonic()
        reply = await _reply(db_dsn, await _ticket(db_dsn, "wamid.M1"), "Yes, from Settings > Plan.")
        first, second = fake.wait_sends("meta", 2)
        for req in (first, second):
            assert req.headers["authorization"] == f"Bearer {META_ACCESS}"
            assert req.body["messaging_product"] == "whatsapp" and req.body["type"] == "text" and req.body["to"] == "15551240002"
            assert "Settings > Plan" in req.body["text"]["body"]
            assert req.body["biz_opaque_callback_data"] == f"crm:{reply}:1"
        row = await _wait_status(db_dsn, reply, "sent")
        assert time.monotonic() - t0 >= 1.0, "Retry-After: 1 was honoured"
        wamid = row["channel_message_id"]
        assert wamid.startswith("wamid.")
        # the bridge counts a delivery once update_delivery_status has answered, just after the row changed
        health = wait_until(lambda: (h := http.get(f"{wa.base}/healthz").json())["delivered"] >= 1 and h,
                            what="the bridge counting the delivery")
        assert health["retried"] == 1 and health["delivered"] == 1

        def status(name: str, **extra: Any) -> dict[str, Any]:
            return {"id": wamid, "status": name, "timestamp": str(int(time.time())), "recipient_id": "15551240002",
                    "biz_opaque_callback_data": f"crm:{reply}:1", **extra}

        assert wa.post_meta(http, meta_envelope(statuses=[status("delivered")])).status_code == 200
        assert (await _message(db_dsn, reply))["delivery_status"] == "delivered"
        assert wa.post_meta(http, meta_envelope(statuses=[status("sent"), status("read")])).status_code == 200
        assert (await _message(db_dsn, reply))["delivery_status"] == "read"
        # a status without our callback data is found by the wamid
        plain = {k: v for k, v in status("delivered").items() if k != "biz_opaque_callback_data"}
        assert wa.post_meta(http, meta_envelope(statuses=[plain])).status_code == 200
        assert (await _message(db_dsn, reply))["delivery_status"] == "read"
        assert http.get(f"{wa.base}/healthz").json()["status_refused"] == 0

        # Meta accepts a send and reports the window error later, in a failed status: failed, noted, escalated
        ticket = await _ticket(db_dsn, "wamid.M1")
        later = await _reply(db_dsn, ticket, "One more thing.")
        wamid2 = (await _wait_status(db_dsn, later, "sent"))["channel_message_id"]
        failed = {"id": wamid2, "status": "failed", "timestamp": str(int(time.time())), "recipient_id": "15551240002",
                  "biz_opaque_callback_data": f"crm:{later}:1",
                  "errors": [{"code": 131047, "title": "Re-engagement message",
                              "error_data": {"details": "Message failed to send because more than 24 hours have passed"}}]}
        assert wa.post_meta(http, meta_envelope(statuses=[failed])).status_code == 200
        row = await _message(db_dsn, later)
        assert row["delivery_status"] == "failed" and row["delivery_error"].startswith("Meta 131047: Re-engagement message")
        t = await _row(db_dsn, "SELECT status, escalation_reason FROM tickets WHERE ticket_number = $1", ticket)
        assert t["status"] == "escalated" and "131047" in t["escalation_reason"]


async def _events(dsn: str, ticket: str) -> list[tuple[str, str | None, str | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT e.kind, e.to_value, e.note FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id "
                                "WHERE t.ticket_number = $1 ORDER BY e.created_at", ticket)
    finally:
        await conn.close()
    return [(r["kind"], r["to_value"], r["note"]) for r in rows]


async def test_the_24_hour_window_with_and_without_a_template(db_dsn: str, tmp_path: Path) -> None:
    old = int(time.time()) - 25 * 3600
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, httpx.Client(timeout=30) as http:
        with whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa:
            # Meta, last customer message 25 hours ago, no template: failed without a send, noted, escalated
            assert wa.post_meta(http, meta_envelope(messages=[meta_text("wamid.OLD", "+15551240003", "Hello?", ts=old)])).status_code == 200
            t_old = await _ticket(db_dsn, "wamid.OLD")
            late = await _reply(db_dsn, t_old, "Sorry for the delay.")
            row = await _wait_status(db_dsn, late, "failed")
            assert "24-hour window" in row["delivery_error"] and "no approved template" in row["delivery_error"]
            assert fake.sends("meta") == []
            # Twilio inside the window, but Twilio answers 63016: the same, with the provider's words
            assert wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "2" * 32, "+15551240004", "Hi")).status_code == 200
            t_tw = await _ticket(db_dsn, "SM" + "2" * 32)
            fake.script = ["window"]
            refused = await _reply(db_dsn, t_tw, "Here is the answer.")
            row = await _wait_status(db_dsn, refused, "failed")
            assert "Twilio 63016" in row["delivery_error"]
            assert len(fake.sends("twilio")) == 1
            # an invalid number fails with Twilio's words, and is not an escalation
            assert wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "3" * 32, "+15551240005", "Hi")).status_code == 200
            t_bad = await _ticket(db_dsn, "SM" + "3" * 32)
            fake.script = ["invalid_number"]
            bad = await _reply(db_dsn, t_bad, "Answer.")
            assert "Invalid 'To' Phone Number" in (await _wait_status(db_dsn, bad, "failed"))["delivery_error"]
        for ticket in (t_old, t_tw):
            events = await _events(db_dsn, ticket)
            assert any(e[1] == "delivery_failed" for e in events), events
            assert (await _row(db_dsn, "SELECT status FROM tickets WHERE ticket_number = $1", ticket))["status"] == "escalated"
        # (the 25-hour-old ticket was already escalated by its SLA; the Twilio one by the failed report)
        [esc] = [e for e in await _events(db_dsn, t_tw) if e[0] == "escalation"]
        assert esc[2].startswith("Reply could not be delivered on whatsapp: not sent: Twilio 63016") and "no approved template" in esc[2]
        assert (await _row(db_dsn, "SELECT status FROM tickets WHERE ticket_number = $1", t_bad))["status"] != "escalated"

        # escalate is for failed reports only, and a repeated report changes nothing (one escalation)
        async with mcp_client(db_dsn) as staff:
            err = await call_error(staff, "update_delivery_status", message_id=late, status="sent", escalate=True)
            assert "escalate is only used with status='failed'" in err
            again = await call(staff, "update_delivery_status", message_id=refused, status="failed", error="x", escalate=True)
            assert again["changed"] is False
        assert len([e for e in await _events(db_dsn, t_tw) if e[0] == "escalation"]) == 1

        # with templates configured: outside the window the template goes out instead
        env = provider_env(fake, META_TEMPLATE_NAME="ticket_update", META_TEMPLATE_LANGUAGE="pt_BR",
                           TWILIO_TEMPLATE_CONTENT_SID="HX" + "9" * 32, WHATSAPP_TEMPLATE_PARAMS='["{ticket_number}"]')
        with whatsapp(url, db_dsn, tmp_path, env) as wa:
            assert wa.post_meta(http, meta_envelope(messages=[meta_text("wamid.OLD2", "+15551240006", "Hello?", ts=old)])).status_code == 200
            t2 = await _ticket(db_dsn, "wamid.OLD2")
            templated = await _reply(db_dsn, t2, "We fixed it.")
            [req] = fake.wait_sends("meta", 1)
            assert req.body["type"] == "template" and "text" not in req.body
            assert req.body["template"] == {"name": "ticket_update", "language": {"code": "pt_BR"},
                                            "components": [{"type": "body", "parameters": [{"type": "text", "text": t2}]}]}
            assert (await _wait_status(db_dsn, templated, "sent"))["channel_message_id"].startswith("wamid.")
            # Twilio inside the window answering 63016: the Content template follows
            assert wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "4" * 32, "+15551240007", "Hi")).status_code == 200
            t3 = await _ticket(db_dsn, "SM" + "4" * 32)
            fake.script = ["window"]
            tw = await _reply(db_dsn, t3, "Answer.")
            await _wait_status(db_dsn, tw, "sent")
            free, tpl = fake.sends("twilio")[-2:]
            assert "Body" in free.body and "ContentSid" not in free.body
            assert tpl.body["ContentSid"] == "HX" + "9" * 32 and json.loads(tpl.body["ContentVariables"]) == {"1": t3}
            assert "Body" not in tpl.body
        assert (await _row(db_dsn, "SELECT status FROM tickets WHERE ticket_number = $1", t3))["status"] != "escalated"
        for ticket in (t2, t3):  # (t2, 25 hours old, is escalated by its SLA, not by delivery)
            assert not [e for e in await _events(db_dsn, ticket) if e[1] == "delivery_failed" or e[0] == "escalation"]


async def test_a_bridge_killed_mid_send_and_restarted_loses_nothing(db_dsn: str, tmp_path: Path) -> None:
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, httpx.Client(timeout=30) as http:
        env = provider_env(fake)
        wa = start_whatsapp(url, db_dsn, tmp_path, env, lease_s=5)
        try:
            assert wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "5" * 32, "+15551240008", "Help")).status_code == 200
            fake.script = ["hang"]  # Twilio takes the request and the bridge dies before the answer
            reply = await _reply(db_dsn, await _ticket(db_dsn, "SM" + "5" * 32), "On it.")
            fake.wait_sends("twilio", 1)
            wa.proc.kill()
            wa.proc.wait(10)
        finally:
            stop_process(wa.proc)
        assert (await _message(db_dsn, reply))["delivery_status"] == "pending"
        wa = start_whatsapp(url, db_dsn, tmp_path, env, lease_s=5)
        try:
            row = await _wait_status(db_dsn, reply, "sent", timeout=40)
        finally:
            stop_process(wa.proc)
        sends = fake.sends("twilio")
        assert len(sends) == 2, "at most one duplicate send"
        assert [parse_qs(urlsplit(s.body["StatusCallback"]).query)["attempt"] for s in sends] == [["1"], ["2"]]
        assert row["delivery_attempts"] == 2 and row["channel_message_id"].startswith("SM")
        assert '"whatsapp_resend"' in wa.log() and '"attempt": 2' in wa.log()
