"""The email bridge end to end over IMAP/SMTP: Dovecot (IDLE) as the mailbox, aiosmtpd as the
outgoing server, `crm-mcp serve --http` as the CRM and `crm-mcp bridge email` as a process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from .conftest import call, mcp_client
from .email_helpers import SUPPORT, dovecot, email_bridge, email_env, health, mail, smtp_sink
from .webform_helpers import crm_http

pytestmark = pytest.mark.anyio


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def wait_rows(dsn: str, sql: str, *args: Any, count: int = 1, timeout: float = 20.0, what: str = "rows") -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await fetch(dsn, sql, *args)
        if len(rows) >= count:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: have {len(rows)} of {count}")
        await anyio.sleep(0.2)


async def age_conversation(dsn: str, conversation_id: Any) -> None:
    """Move a conversation's last activity two days back and resolve its ticket: outside the 24-hour window."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE conversations SET last_activity_at = now() - interval '2 days' WHERE id = $1", conversation_id)
        await conn.execute("UPDATE tickets SET status = 'resolved', resolved_at = now(), resolution_notes = 'test: answered' "
                           "WHERE conversation_id = $1", conversation_id)
    finally:
        await conn.close()


INBOUND = "SELECT * FROM messages WHERE channel = 'email' AND direction = 'inbound' ORDER BY created_at"


async def test_mail_in_reply_out_thread_robots_and_bounce(db_dsn: str, tmp_path: Path) -> None:
    with dovecot() as dv, smtp_sink() as sink, crm_http(db_dsn, tmp_path) as url, \
            email_bridge(url, db_dsn, tmp_path, email_env(dv.port, sink.port)) as base:
        assert health(base)["email"]["inbound_connected"] is True
        # a new mail arrives while the bridge IDLEs: ingested within seconds
        first_id = "<first-1@example.org>"
        arrived = time.monotonic()
        await dv.imap().append(mail(message_id=first_id, body="Every CSV export stops at 99%.\n\n-- \nAna Lima\nACME Corp"))
        [row] = await wait_rows(db_dsn, INBOUND, timeout=10, what="the first mail")
        assert time.monotonic() - arrived < 10
        assert row["channel_message_id"] == first_id and row["subject"] == "CSV export fails"
        assert row["content"] == "Every CSV export stops at 99%.", "the signature is cut from what the agent reads"
        meta = row["metadata"] if isinstance(row["metadata"], dict) else json.loads(row["metadata"])
        assert "ACME Corp" in meta["full_body"], "the full body is kept"
        ticket = (await fetch(db_dsn, "SELECT ticket_number FROM tickets WHERE conversation_id = $1", row["conversation_id"]))[0][0]

        # the agent replies: a real RFC 5322 reply reaches the SMTP server
        async with mcp_client(db_dsn) as agent:
            sent = await call(agent, "send_response", ticket_number=ticket, body="Please update to 4.2.\n\nThe export finishes there.")
        [reply] = sink.wait_for(1)
        ours = f"<crm-{sent['parts'][0]['message_id']}@example.com>"
        assert reply["Message-ID"] == ours
        assert "Acme Support" in reply["From"] and SUPPORT in reply["From"]
        assert reply["To"] == "ana@example.org"
        assert reply["Subject"] == "Re: CSV export fails"
        assert reply["In-Reply-To"] == first_id and reply["References"] == first_id
        assert reply.get_content_type() == "multipart/alternative"
        assert "update to 4.2" in reply.get_body(("plain",)).get_content()
        assert "<p>Please update to 4.2.</p>" in reply.get_body(("html",)).get_content()
        assert sink.envelopes[0] == (SUPPORT, ["ana@example.org"])
        out = await wait_rows(db_dsn, "SELECT * FROM messages WHERE id = $1::uuid AND delivery_status = 'sent'",
                              sent["parts"][0]["message_id"], what="the reply reported sent")
        assert out[0]["channel_message_id"] == ours

        # two days later, the ticket resolved: the customer answers the reply under another subject,
        # and it joins the conversation by its threading headers alone
        await age_conversation(db_dsn, row["conversation_id"])
        follow = "<follow-2@example.org>"
        await dv.imap().append(mail(message_id=follow, subject="still broken", in_reply_to=ours, references=f"{first_id} {ours}",
                                    body="Updated, still stuck.\n\nOn Mon, Acme Support wrote:\n> Please update to 4.2."))
        rows = await wait_rows(db_dsn, INBOUND, count=2, what="the follow-up")
        assert rows[1]["conversation_id"] == row["conversation_id"]
        assert rows[1]["content"] == "Updated, still stuck.", "quoted history is cut"
        # the same person later, a new subject and no threading headers: the 24-hour rule applies
        await age_conversation(db_dsn, row["conversation_id"])
        await dv.imap().append(mail(message_id="<new-topic@example.org>", subject="New question", body="Do you ship to Chile?"))
        rows = await wait_rows(db_dsn, INBOUND, count=3, what="the new topic")
        assert rows[2]["conversation_id"] != row["conversation_id"]

        # robots and our own mail are never customer messages
        robots = [
            mail(sender="Ana <ana@example.org>", subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
            mail(sender="news@example.org", subject="Weekly news", headers={"Precedence": "bulk"}),
            mail(sender="list@example.org", subject="[list] hi", headers={"List-Id": "<dev.lists.example.org>"}),
            mail(sender="noreply@shop.example.org", subject="Your receipt"),
            mail(sender=f"Us <{SUPPORT}>", subject="Re: loop"),
        ]
        await dv.imap().append(*robots)
        # a bounce for our reply marks it failed
        dsn_mail = (
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\nTo: support@example.com\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce-1@mx.example.org>\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
            "Final-Recipient: rfc822; ana@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\r\n"
            f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@example.com\r\nMessage-ID: {ours}\r\n"
            "Subject: Re: CSV export fails\r\n\r\n--B--\r\n").encode()
        await dv.imap().append(dsn_mail)
        failed = await wait_rows(db_dsn, "SELECT * FROM messages WHERE id = $1::uuid AND delivery_status = 'failed'",
                                 sent["parts"][0]["message_id"], what="the bounce marking the reply failed")
        assert "550 5.1.1 mailbox unknown" in failed[0]["delivery_error"]
        h = health(base)["email"]
        assert h["robots"] == 5 and h["bounces"] == 1, h
        assert len(await fetch(db_dsn, INBOUND)) == 3, "no robot mail was ingested"


async def test_html_only_odd_charsets_and_broken_mail_keep_the_mailbox_flowing(db_dsn: str, tmp_path: Path) -> None:
    html_only = mail(subject="=?utf-8?q?Fa=C3=A7a_isso?=", body=None,
                     html="<html><head><style>p{}</style></head><body><p>Hello,</p><p>the <b>invoice</b> is wrong.</p>"
                          "<blockquote>old quoted text</blockquote></body></html>")
    latin1 = ("From: =?iso-8859-1?q?Jos=E9_Garc=EDa?= <jose@example.org>\r\nTo: support@example.com\r\n"
              "Subject: =?iso-8859-1?q?Factura_err=F3nea?=\r\nMessage-ID: <latin1@example.org>\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() + \
        "La factura está mal, señor.\r\n".encode("latin-1")
    bad_charset = ("From: kim@example.org\r\nTo: support@example.com\r\nSubject: odd\r\nMessage-ID: <odd@example.org>\r\n"
                   "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n").encode() + "caf\xe9 ok\r\n".encode("utf-8")
    no_from = b"To: support@example.com\r\nSubject: who?\r\nMessage-ID: <nofrom@example.org>\r\n\r\nanonymous\r\n"
    broken_mime = (b"From: lee@example.org\r\nTo: support@example.com\r\nSubject: broken\r\nMessage-ID: <broken@example.org>\r\n"
                   b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
                   b"--never-closed\r\nContent-Type: text/plain\r\n\r\nthe part that survives\r\n")
    huge = mail(sender="max@example.org", subject="scans", message_id="<huge@example.org>", body="x" * 100 + "\n" + ("y" * 998 + "\n") * 26_500)
    last = mail(sender="zoe@example.org", subject="after the bad ones", message_id="<last@example.org>", body="Still flowing.")
    with dovecot() as dv, smtp_sink() as sink, crm_http(db_dsn, tmp_path) as url, \
            email_bridge(url, db_dsn, tmp_path, email_env(dv.port, sink.port)) as base:
        await dv.imap().append(html_only, latin1, bad_charset, no_from, broken_mime, huge, last)
        rows = await wait_rows(db_dsn, INBOUND, count=5, what="the readable mails")
        by_id = {r["channel_message_id"]: r for r in rows}
        html_row = next(r for r in rows if r["subject"] == "Faça isso")
        assert "the invoice is wrong." in html_row["content"] and "<b>" not in html_row["content"]
        assert "old quoted text" not in html_row["content"] and "p{}" not in html_row["content"]
        assert by_id["<latin1@example.org>"]["content"] == "La factura está mal, señor."
        assert by_id["<latin1@example.org>"]["subject"] == "Factura errónea"
        odd = by_id["<odd@example.org>"]
        assert "café ok" in odd["content"]
        assert "x-no-such-charset" in json.dumps(odd["metadata"] if isinstance(odd["metadata"], dict) else json.loads(odd["metadata"]))
        assert "the part that survives" in by_id["<broken@example.org>"]["content"]
        assert by_id["<last@example.org>"]["content"] == "Still flowing."
        assert "<nofrom@example.org>" not in by_id and "<huge@example.org>" not in by_id
        h = health(base)["email"]
        assert h["refused"] == 2 and "the limit is 25 MB (not downloaded)" in h["last_refused"], h
        log = "".join(p.read_text() for p in tmp_path.glob("email-bridge-*.log"))
        assert "no usable From address" in log and "INBOX/4" in log, "each refusal is logged with its reason and place"
        sender = await fetch(db_dsn, "SELECT name FROM customers c JOIN customer_identifiers i ON i.customer_id = c.id "
                                     "WHERE i.value = 'jose@example.org'")
        assert sender and sender[0]["name"] == "José García"


CHECKPOINT = "SELECT value FROM bridge_checkpoints WHERE bridge = 'email:support@example.com' AND key = 'imap:Support'"


async def test_restart_fetches_nothing_twice_uidvalidity_change_resyncs_and_replies_are_rate_limited(
        db_dsn: str, tmp_path: Path) -> None:
    a, b, c, d = (mail(sender=f"p{i}@example.org", subject=f"s{i}", message_id=f"<m{i}@example.org>", body=f"mail {i}")
                  for i in range(4))
    env_extra = {"CRM_IMAP_FOLDER": "Support", "CRM_EMAIL_REPLY_LIMIT": "2/3600"}
    with dovecot() as dv, smtp_sink() as sink, crm_http(db_dsn, tmp_path) as url:
        imap = dv.imap()
        await imap.recreate("Support")
        await imap.append(a, b, folder="Support")
        env = email_env(dv.port, sink.port, **env_extra)
        with email_bridge(url, db_dsn, tmp_path, env) as base:
            rows = await wait_rows(db_dsn, INBOUND, count=2, what="the first two mails")
            assert health(base)["email"]["fetched"] == 2
            # three replies to one address inside the window: two go out, the third waits
            ticket = (await fetch(db_dsn, "SELECT ticket_number FROM tickets WHERE conversation_id = $1", rows[0]["conversation_id"]))[0][0]
            async with mcp_client(db_dsn) as agent:
                sent = [await call(agent, "send_response", ticket_number=ticket, body=f"answer {n}") for n in range(3)]
            sink.wait_for(2)
            await anyio.sleep(3)
            assert len(sink.messages) == 2, "the third reply to one address within the window was held back"
            third = await fetch(db_dsn, "SELECT delivery_status FROM messages WHERE id = $1::uuid", sent[2]["parts"][0]["message_id"])
            assert third[0]["delivery_status"] == "pending"
            assert health(base)["retried"] >= 1
        first_validity = await imap.uidvalidity("Support")
        [cp] = await fetch(db_dsn, CHECKPOINT)
        assert json.loads(cp["value"]) == {"uidvalidity": first_validity, "last_uid": 2}

        # restart: only the mail that came meanwhile is fetched
        await imap.append(c, folder="Support")
        with email_bridge(url, db_dsn, tmp_path, env) as base:
            await wait_rows(db_dsn, INBOUND, count=3, what="the mail that came while the bridge was down")
            await anyio.sleep(1)
            assert health(base)["email"]["fetched"] == 1, "nothing fetched twice after a restart"

        # the mailbox is rebuilt (new UIDVALIDITY, old mail under new UIDs): resync, nothing ingested twice
        await anyio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        await imap.recreate("Support")
        await imap.append(a, c, d, folder="Support")
        new_validity = await imap.uidvalidity("Support")
        assert new_validity != first_validity
        with email_bridge(url, db_dsn, tmp_path, env) as base:
            rows = await wait_rows(db_dsn, INBOUND, count=4, what="the new mail after the resync")
            await wait_rows(db_dsn, CHECKPOINT + " AND (value->>'uidvalidity')::bigint = $1", new_validity, what="the new checkpoint")
            assert health(base)["email"]["fetched"] == 3
            # the IMAP server goes away and comes back: the bridge reconnects and picks up new mail
            dv.restart()
            await imap.append(mail(sender="p9@example.org", subject="after the outage", message_id="<m9@example.org>"), folder="Support")
            await wait_rows(db_dsn, INBOUND, count=5, timeout=40, what="the mail after the IMAP server came back")
            assert health(base)["email"]["inbound_connected"] is True
            # the checkpoint is saved after the mail it covers is committed: wait for it before stopping the bridge
            await wait_rows(db_dsn, CHECKPOINT + " AND (value->>'last_uid')::bigint >= 4", what="the checkpoint past the new mail")
        assert sorted(r["channel_message_id"] for r in await fetch(db_dsn, INBOUND)) == [f"<m{i}@example.org>" for i in (0, 1, 2, 3, 9)]
        [cp] = await fetch(db_dsn, CHECKPOINT)
        assert json.loads(cp["value"]) == {"uidvalidity": new_validity, "last_uid": 4}
