"""The email bridge's Gmail back end against a local stand-in for the Gmail API (the real
google-api-python-client pointed at it) and Pub/Sub pushes to the bridge's /gmail/push."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from .conftest import call, mcp_client
from .email_helpers import SUPPORT, email_bridge, health, mail
from .gmail_fake import fake_gmail
from .test_email_imap import fetch, wait_rows
from .webform_helpers import crm_http

pytestmark = pytest.mark.anyio

PUSH_TOKEN = "push-token-0123456789abcdef"
TOPIC = "projects/acme-support/topics/gmail-inbox"
INBOUND = "SELECT * FROM messages WHERE channel = 'email' AND direction = 'inbound' ORDER BY created_at"
CHECKPOINT = "SELECT value FROM bridge_checkpoints WHERE bridge = 'email:support@example.com' AND key = 'gmail:history'"


def push(base: str, history_id: int, token: str = PUSH_TOKEN) -> httpx.Response:
    data = base64.b64encode(json.dumps({"emailAddress": SUPPORT, "historyId": history_id}).encode()).decode()
    envelope = {"message": {"data": data, "messageId": "1", "publishTime": "2026-11-30T04:00:00Z"},
                "subscription": "projects/acme-support/subscriptions/crm"}
    return httpx.post(f"{base}/gmail/push", params={"token": token}, json=envelope, timeout=10)


async def test_gmail_push_reply_in_thread_and_expired_history_resync(db_dsn: str, tmp_path: Path) -> None:
    with fake_gmail() as gmail, crm_http(db_dsn, tmp_path) as url:
        env = {"CRM_SUPPORT_ADDRESS": SUPPORT, "CRM_EMAIL_BACKEND": "gmail", "GMAIL_API_BASE": gmail.base, "GMAIL_TOPIC": TOPIC,
               "GMAIL_PUSH_TOKEN": PUSH_TOKEN, "GMAIL_POLL_S": "600", "CRM_LOG_LEVEL": "INFO"}
        first = gmail.deliver(mail(message_id="<g-first@example.org>", subject="Refund please", body="I want a refund."),
                              thread_id="thread-A")
        with email_bridge(url, db_dsn, tmp_path, env) as base:
            # first start: the recent mail is read in full, and the mailbox is watched on the topic
            [row] = await wait_rows(db_dsn, INBOUND, what="the mail already in the mailbox")
            assert row["channel_message_id"] == first and row["thread_ref"] == "thread-A"
            assert gmail.watches and gmail.watches[0]["topicName"] == TOPIC

            # a push wakes the catch-up at once (the fallback poll is 10 minutes away)
            assert push(base, 1, token="wrong-token").status_code == 403
            # (five minutes later: the reply answers the latest message, and a tie in time would leave that open)
            second = gmail.deliver(mail(message_id="<g-second@example.org>", subject="other", body="Also the invoice.",
                                        date="Mon, 30 Nov 2026 04:05:00 +0000"),
                                   thread_id="thread-A")
            arrived = time.monotonic()
            assert push(base, gmail.history_id).status_code == 204
            rows = await wait_rows(db_dsn, INBOUND, count=2, timeout=10, what="the pushed mail")
            assert time.monotonic() - arrived < 10
            assert rows[1]["channel_message_id"] == second and rows[1]["conversation_id"] == row["conversation_id"]

            # the reply goes out by messages.send in the customer's thread
            ticket = (await fetch(db_dsn, "SELECT ticket_number FROM tickets WHERE conversation_id = $1", row["conversation_id"]))[0][0]
            async with mcp_client(db_dsn) as agent:
                sent = await call(agent, "send_response", ticket_number=ticket, body="Your refund is on its way.")
            ours = f"<crm-{sent['parts'][0]['message_id']}@example.com>"
            await wait_rows(db_dsn, "SELECT 1 FROM messages WHERE id = $1::uuid AND delivery_status = 'sent' AND channel_message_id = $2",
                            sent["parts"][0]["message_id"], ours, what="the reply reported sent")
            [(msg, body)] = gmail.sent
            assert body["threadId"] == "thread-A"
            assert msg["Message-ID"] == ours and msg["Subject"] == "Re: other"
            assert msg["In-Reply-To"] == "<g-second@example.org>" and SUPPORT in msg["From"]
            assert msg.get_body(("html",)) is not None
            # our own sent mail shows up in the history: it is not ingested
            assert push(base, gmail.history_id).status_code == 204
            time.sleep(1.5)
            assert len(await fetch(db_dsn, INBOUND)) == 2

        # while the bridge is down the stored history id expires: the restart resyncs recent mail
        third = gmail.deliver(mail(message_id="<g-third@example.org>", subject="third", body="Any news?",
                                  date="Mon, 30 Nov 2026 04:10:00 +0000"), thread_id="thread-A")
        gmail.expire_history()
        with email_bridge(url, db_dsn, tmp_path, env) as base:
            rows = await wait_rows(db_dsn, INBOUND, count=3, what="the mail found by the full resync")
            assert rows[2]["channel_message_id"] == third
            # the checkpoint is written after the messages it covers are committed: wait for it
            await wait_rows(db_dsn, CHECKPOINT + " AND (value->>'history_id')::bigint >= $1", gmail.expired_before - 1,
                            what="the checkpoint past the expired history")
            assert len(await fetch(db_dsn, INBOUND)) == 3, "the resync ingested nothing twice"
            assert health(base)["email"]["backend"] == "gmail"
