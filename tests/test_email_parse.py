"""The email bridge's pure parts, no servers: MIME to text, quote and signature stripping, robot
and bounce detection, bad mail, the RFC 5322 reply, the reply rate limit and the settings."""

from __future__ import annotations

import pytest

from crm_mcp.channel_bridges.delivery import OutboundPart, PermanentDeliveryError, TransientDeliveryError
from crm_mcp.channel_bridges.email.compose import compose, reply_subject
from crm_mcp.channel_bridges.email.outbound import EmailSender, ReplyRateLimit
from crm_mcp.channel_bridges.email.parse import MAX_MESSAGE_BYTES, BadMail, parse, strip_quotes_and_signature
from crm_mcp.channel_bridges.email.serve import EmailConfigError, EmailSettings

from .email_helpers import mail

OWN = frozenset({"support@example.com"})


def test_quotes_and_signatures_are_cut_from_what_the_agent_reads() -> None:
    assert strip_quotes_and_signature("Thanks, works now.\n\nOn Tue, 1 Dec 2026, Support <s@x.com> wrote:\n> try 4.2") == "Thanks, works now."
    assert strip_quotes_and_signature("Still broken.\n-- \nAna\nACME") == "Still broken."
    assert strip_quotes_and_signature("Hi\n\n-----Original Message-----\nFrom: x") == "Hi"
    assert strip_quotes_and_signature("> you said A\nI disagree.\n> and B\nAlso this.") == "I disagree.\nAlso this."
    assert strip_quotes_and_signature("Yes\n\nSent from my iPhone") == "Yes"


@pytest.mark.parametrize("headers,sender,why", [
    ({"Auto-Submitted": "auto-replied"}, "ana@example.org", "Auto-Submitted"),
    ({"Auto-Submitted": "auto-generated; type=vacation"}, "ana@example.org", "Auto-Submitted"),
    ({"Precedence": "junk"}, "ana@example.org", "Precedence"),
    ({"List-Unsubscribe": "<mailto:u@example.org>"}, "ana@example.org", "mailing list"),
    ({"X-Autoreply": "yes"}, "ana@example.org", "X-Autoreply"),
    ({}, "MAILER-DAEMON@mx.example.org", "automated sender"),
    ({}, "no-reply@shop.example.org", "automated sender"),
    ({}, "donotreply@shop.example.org", "automated sender"),
    ({}, "support@example.com", "our own address"),
])
def test_robots_are_recognised(headers: dict[str, str], sender: str, why: str) -> None:
    got = parse(mail(sender=sender, headers=headers), own_addresses=OWN)
    assert got.robot is not None and why in got.robot


def test_a_person_is_not_a_robot() -> None:
    got = parse(mail(headers={"Auto-Submitted": "no"}), own_addresses=OWN)
    assert got.robot is None and got.sender_email == "ana@example.org" and got.sender_name == "Ana Lima"


def test_threading_ids_in_reply_to_first_then_references_newest_first() -> None:
    got = parse(mail(in_reply_to="<c@x>", references="<a@x> <b@x> <c@x>"))
    assert got.threads_to == ["<c@x>", "<b@x>", "<a@x>"]
    assert got.metadata()["references"] == ["<a@x>", "<b@x>", "<c@x>"]


def test_attachments_are_metadata_and_an_attachment_only_mail_still_has_text() -> None:
    from email.message import EmailMessage

    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "kim@example.org", "support@example.com", "scan", "<att@x>"
    m.set_content("See the scan.")
    m.add_attachment(b"%PDF-1.4 ...", maintype="application", subtype="pdf", filename="invoice.pdf")
    got = parse(m.as_bytes())
    assert got.text == "See the scan."
    assert got.attachments == [{"filename": "invoice.pdf", "content_type": "application/pdf", "bytes": 12}]


def test_bad_mail_is_refused_with_a_reason() -> None:
    with pytest.raises(BadMail, match="no usable From"):
        parse(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nhi\r\n")
    with pytest.raises(BadMail, match="limit is 25 MB"):
        parse(b"From: a@b.example\r\n\r\n" + b"x" * MAX_MESSAGE_BYTES)
    got = parse(b"From: a@b.example\r\nSubject: no id\r\n\r\nhello\r\n", fallback_id="imap-1-7@host")
    assert got.message_id == "<imap-1-7@host>"


def test_a_dsn_names_the_bounced_message_and_the_diagnostic() -> None:
    raw = ("From: MAILER-DAEMON@mx.example.org\r\nTo: support@example.com\r\nSubject: failure\r\nMessage-ID: <b@mx>\r\n"
           'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
           "--B\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
           "Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.2.2\r\n"
           "Diagnostic-Code: smtp; 552 mailbox full\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n"
           "From: support@example.com\r\nMessage-ID: <crm-1@example.com>\r\n\r\nbody\r\n--B--\r\n").encode()
    got = parse(raw, own_addresses=OWN)
    assert got.bounced_ids == ["<crm-1@example.com>"] and "552 mailbox full" in (got.bounce_reason or "")


def part(**kw) -> OutboundPart:
    base = dict(message_id="11111111-1111-1111-1111-111111111111", channel="email", recipient="ana@example.org",
                text="Line one.\n\nLine <two> & more.", ticket_number="TKT-000007", conversation_id="c")
    return OutboundPart.model_validate({**base, **kw})


def test_the_reply_is_a_threaded_rfc5322_message() -> None:
    reply_to = {"channel_message_id": "<q@example.org>", "subject": "RE: Fwd: invoice", "received_at": "2026-11-30T00:00:00Z",
                "metadata": {"references": ["<p@example.org>"], "message_id_header": "<q@example.org>"}}
    msg = compose(part(reply_to=reply_to), support_address="support@example.com", support_name="Acme")
    assert msg["Subject"] == "Re: invoice"
    assert msg["In-Reply-To"] == "<q@example.org>" and msg["References"] == "<p@example.org> <q@example.org>"
    assert msg["Message-ID"] == "<crm-11111111-1111-1111-1111-111111111111@example.com>"
    assert msg["From"] == "Acme <support@example.com>"
    assert "&lt;two&gt; &amp; more" in msg.get_body(("html",)).get_content()
    assert reply_subject(None, "TKT-1") == "Your support request TKT-1"


async def _sent(sender: EmailSender, p: OutboundPart) -> str:
    return (await sender(p)).provider_message_id


@pytest.mark.anyio
async def test_the_sender_refuses_robots_and_limits_replies_per_address() -> None:
    sent: list[str] = []

    async def send(msg, p):
        sent.append(msg["To"])
        return None

    sender = EmailSender("support@example.com", send, rate=ReplyRateLimit(limit=2, window_s=3600))
    for _ in range(2):
        assert (await _sent(sender, part())).startswith("<crm-")
    with pytest.raises(TransientDeliveryError) as held:
        await sender(part())
    assert held.value.retry_after_s and held.value.retry_after_s > 3000
    assert (await _sent(sender, part(recipient="bo@example.org")))
    for robot in ("noreply@example.org", "support@example.com", "two@a.example, three@b.example"):
        with pytest.raises(PermanentDeliveryError):
            await sender(part(recipient=robot))
    assert sent == ["ana@example.org", "ana@example.org", "bo@example.org"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_settings_say_what_is_wrong() -> None:
    base = {"CRM_SUPPORT_ADDRESS": "support@example.com", "CRM_IMAP_HOST": "imap.example.com", "CRM_IMAP_USER": "u",
            "CRM_IMAP_PASSWORD": "p", "CRM_SMTP_HOST": "smtp.example.com"}
    s = EmailSettings.from_env(base)
    assert s.imap.tls and s.imap.port == 993 and s.smtp.tls and s.smtp.port == 587
    with pytest.raises(EmailConfigError, match="only to a loopback host"):
        EmailSettings.from_env({**base, "CRM_IMAP_TLS": "off"})
    assert EmailSettings.from_env({**base, "CRM_IMAP_HOST": "127.0.0.1"}).imap.tls is False
    with pytest.raises(EmailConfigError, match="CRM_SMTP_HOST is not set"):
        EmailSettings.from_env({k: v for k, v in base.items() if k != "CRM_SMTP_HOST"})
    with pytest.raises(EmailConfigError, match="CRM_EMAIL_REPLY_LIMIT"):
        EmailSettings.from_env({**base, "CRM_EMAIL_REPLY_LIMIT": "lots"})
    with pytest.raises(EmailConfigError, match="GMAIL_CREDENTIALS is not set"):
        EmailSettings.from_env({"CRM_SUPPORT_ADDRESS": "support@example.com"}, backend="gmail")
    with pytest.raises(EmailConfigError, match="GMAIL_PUSH_TOKEN"):
        EmailSettings.from_env({"CRM_SUPPORT_ADDRESS": "support@example.com", "GMAIL_API_BASE": "http://127.0.0.1:9/",
                                "GMAIL_TOPIC": "projects/p/topics/t"}, backend="gmail")


def test_the_cli_names_a_missing_setting_in_one_line() -> None:
    import subprocess
    import sys

    from .conftest import REPO

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("CRM_", "GMAIL_"))}
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "bridge", "email"], env=env, cwd=str(REPO),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("crm-mcp: bridge email: CRM_SUPPORT_ADDRESS is not set; see README 'Email bridge' "
                                  "for the settings of each back end.")
