"""One raw RFC 5322 message -> what the CRM records, with the standard library's `email` package.

The agent reads `text`: text/plain preferred, HTML-only mail converted to text, quoted history and
the signature cut off. The whole body is kept in metadata (bounded). Encoded-word headers and odd
charsets are decoded; a charset Python does not know falls back to a lossless-enough decode and is
named in `problems`. Mail from a robot (auto-replies, bulk and list mail, mailer-daemon, noreply,
our own address) is flagged, never treated as a customer message; a delivery status notification
names the Message-IDs of the mail it bounces."""

from __future__ import annotations

import email
import email.policy
import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_CONTENT = 50_000  # ingest_message's content limit
MAX_FULL_BODY = 8_000  # of the unstripped body kept in metadata (metadata is capped at 16 KB)
MAX_REFERENCES = 20  # ingest_message's in_reply_to limit

_MSGID = re.compile(r"<[^<>\s]+>")
_ROBOT_LOCALPART = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?)([+\-._].*)?$", re.I)
_LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Post", "List-Help", "List-Owner", "List-Archive")


class BadMail(Exception):
    """The message cannot become a customer message (no sender, too large...): the reason says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParsedMail:
    message_id: str
    sender_email: str
    sender_name: str | None
    subject: str | None
    text: str
    full_body: str
    in_reply_to: list[str]
    references: list[str]
    date: datetime | None
    attachments: list[dict[str, object]] = field(default_factory=list)
    robot: str | None = None  # why it is not a customer message
    bounced_ids: list[str] = field(default_factory=list)  # a DSN: the Message-IDs it reports as undelivered
    bounce_reason: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def threads_to(self) -> list[str]:
        """In-Reply-To first, then References newest first, deduplicated: what the CRM matches."""
        seen: list[str] = []
        for mid in [*self.in_reply_to, *reversed(self.references)]:
            if mid not in seen:
                seen.append(mid)
        return seen[:MAX_REFERENCES]

    def metadata(self) -> dict[str, object]:
        meta: dict[str, object] = {"provider": "email", "references": self.references[-MAX_REFERENCES:]}
        if self.attachments:
            meta["attachments"] = self.attachments[:20]
        if self.full_body != self.text:
            meta["full_body"] = self.full_body[:MAX_FULL_BODY]
            if len(self.full_body) > MAX_FULL_BODY:
                meta["full_body_truncated"] = True
        if self.problems:
            meta["problems"] = self.problems[:10]
        return meta


def message_ids(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


def normalise_id(value: str | None) -> str | None:
    """A Message-ID as `<local@domain>`; None when there is none usable."""
    if not value:
        return None
    found = message_ids(value)
    if found:
        return found[0]
    value = value.strip()
    return f"<{value}>" if value and " " not in value and len(value) < 490 else None


def parse(raw: bytes, *, own_addresses: frozenset[str] = frozenset(), fallback_id: str | None = None) -> ParsedMail:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMail(f"message is {len(raw) / 1048576:.1f} MB; the limit is {MAX_MESSAGE_BYTES // 1048576} MB")
    problems: list[str] = []
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as exc:  # the parser is lenient; this is a last resort
        raise BadMail(f"unparseable message: {type(exc).__name__}") from None
    assert isinstance(msg, EmailMessage)
    if msg.defects:
        problems.append("MIME defects: " + ", ".join(sorted({type(d).__name__ for d in msg.defects}))[:200])

    sender_name, sender_email = _sender(msg)
    if not sender_email:
        raise BadMail("no usable From address")
    mid = normalise_id(_header(msg, "Message-ID")) or (f"<{fallback_id}>" if fallback_id else None)
    if mid is None:
        raise BadMail("no Message-ID and no fallback id")
    subject = (_header(msg, "Subject") or "").strip()[:500] or None
    date = None
    try:
        date = parsedate_to_datetime(_header(msg, "Date") or "")
        if date is not None and date.tzinfo is None:
            date = date.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError, IndexError):
        pass

    full, attachments = _body(msg, problems)
    full = full.strip()[:MAX_CONTENT] or ""
    text = strip_quotes_and_signature(full) or full
    parsed = ParsedMail(
        message_id=mid, sender_email=sender_email, sender_name=sender_name, subject=subject,
        text=text, full_body=full, in_reply_to=message_ids(_header(msg, "In-Reply-To"))[:MAX_REFERENCES],
        references=message_ids(_header(msg, "References")), date=date, attachments=attachments, problems=problems)
    parsed.robot = robot_reason(msg, sender_email, own_addresses)
    if _is_dsn(msg, sender_email):
        parsed.bounced_ids, parsed.bounce_reason = _bounce(msg)
        parsed.robot = parsed.robot or "delivery status notification"
    return parsed


def _header(msg: Message, name: str) -> str | None:
    """A header as text; an undecodable one is read raw rather than failing the message."""
    try:
        value = msg.get(name)
    except Exception:
        value = None
        for k, v in msg.raw_items() if hasattr(msg, "raw_items") else []:
            if k.lower() == name.lower():
                value = v
                break
    return None if value is None else str(value)


def _sender(msg: EmailMessage) -> tuple[str | None, str | None]:
    for name in ("From", "Sender", "Reply-To"):
        raw = _header(msg, name)
        if not raw:
            continue
        for display, addr in getaddresses([raw]):
            addr = addr.strip()
            if "@" in addr and " " not in addr and len(addr) <= 320:
                return (display.strip()[:200] or None), addr.lower()
    return None, None


def robot_reason(msg: Message, sender: str, own: frozenset[str]) -> str | None:
    auto = (_header(msg, "Auto-Submitted") or "").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto[:40]}"
    precedence = (_header(msg, "Precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for h in _LIST_HEADERS:
        if msg.get(h) is not None:
            return f"mailing list ({h})"
    for h in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"):
        value = (_header(msg, h) or "").strip().lower()
        if value and (h != "X-Auto-Response-Suppress" or "all" in value or "oof" in value):
            return f"{h}: {value[:40]}"
    if sender in own:
        return "sent from our own address"
    local = sender.split("@", 1)[0]
    if _ROBOT_LOCALPART.match(local):
        return f"automated sender ({local})"
    return None


def _is_dsn(msg: Message, sender: str) -> bool:
    if msg.get_content_type() == "multipart/report" and (msg.get_param("report-type") or "").lower() == "delivery-status":
        return True
    return sender.split("@", 1)[0].lower() in ("mailer-daemon", "postmaster") and msg.get("X-Failed-Recipients") is not None


def _bounce(msg: Message) -> tuple[list[str], str | None]:
    """The Message-IDs of the returned message and the diagnostic, from a DSN (RFC 3464)."""
    ids: list[str] = []
    reason = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                ids += message_ids(_header(inner, "Message-ID"))
            else:
                raw = part.get_payload(decode=True) or b""
                ids += message_ids(email.message_from_bytes(raw).get("Message-ID"))
        elif ctype == "message/delivery-status":
            for block in part.get_payload() if isinstance(part.get_payload(), list) else []:
                diag = block.get("Diagnostic-Code") or block.get("Status")
                if diag and reason is None:
                    reason = " ".join(str(diag).split())[:500]
    # A bounce without the report part often still names the original in its threading headers.
    ids += message_ids(_header(msg, "In-Reply-To")) + message_ids(_header(msg, "References"))
    return list(dict.fromkeys(ids)), reason or ("bounced: " + (_header(msg, "Subject") or "delivery failed"))[:500]


def _decode(part: Message, problems: list[str]) -> str:
    try:
        content = part.get_content()
        return content if isinstance(content, str) else content.decode("utf-8", "replace")
    except (LookupError, UnicodeError, AssertionError, ValueError) as exc:
        charset = part.get_content_charset() or "unknown"
        problems.append(f"charset {charset[:40]!r} could not be decoded ({type(exc).__name__}); read as UTF-8/Latin-1")
        raw = part.get_payload(decode=True) or b""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _body(msg: EmailMessage, problems: list[str]) -> tuple[str, list[dict[str, object]]]:
    attachments: list[dict[str, object]] = []
    plain: list[str] = []
    htmls: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        if disposition == "attachment" or (ctype not in ("text/plain", "text/html") and not ctype.startswith("message/")):
            payload = part.get_payload(decode=True) or b""
            attachments.append({"filename": (part.get_filename() or "")[:200] or None, "content_type": ctype,
                                "bytes": len(payload)})
            continue
        if ctype == "text/plain":
            plain.append(_decode(part, problems))
        elif ctype == "text/html":
            htmls.append(html_to_text(_decode(part, problems)))
    if plain and any(p.strip() for p in plain):
        return "\n\n".join(p.strip() for p in plain if p.strip()), attachments
    if htmls:
        return "\n\n".join(h for h in htmls if h), attachments
    return "", attachments


class _Html2Text(HTMLParser):
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol"}
    _SKIP = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.quote = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "blockquote":
            self.quote += 1
            self.out.append("\n")
        elif tag in self._BLOCK:
            self.out.append("\n")
            if tag == "li":
                self.out.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
            self.out.append("\n")
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        text = " ".join(data.split())
        if not text:
            if data and self.out and not self.out[-1].endswith((" ", "\n")):
                self.out.append(" ")
            return
        if self.quote:  # quoted history in HTML: marked like plain-text quotes so stripping finds it
            text = "> " + text
        if data[:1].isspace() and self.out and not self.out[-1].endswith((" ", "\n")):
            text = " " + text
        if data[-1:].isspace():
            text += " "
        self.out.append(text)


def html_to_text(markup: str) -> str:
    parser = _Html2Text()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is forgiving; never fail a message on markup
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    lines = [line.strip() for line in "".join(parser.out).splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_ATTRIBUTION = re.compile(
    r"^(On .{0,300}wrote:|Le .{0,300}a écrit\s?:|Am .{0,300}schrieb .{0,100}:|El .{0,300}escribió:|Em .{0,300}escreveu:"
    r"|-{2,}\s*Original Message\s*-{2,}|-{2,}\s*Forwarded message\s*-{2,}|_{10,}|From: .+|De: .+|Von: .+)\s*$", re.I)
_SIGNATURE = re.compile(r"^(-- ?|--|Sent from my .{1,40}|Enviado desde mi .{1,40}|Get Outlook for .{1,40})$")


def strip_quotes_and_signature(text: str) -> str:
    """The new part of a reply: up to the first quote attribution, quoted block or signature marker."""
    lines = text.splitlines()
    keep: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if _SIGNATURE.match(line.rstrip()) or _SIGNATURE.match(stripped):
            break
        if _ATTRIBUTION.match(stripped):
            # "On ... wrote:" may wrap over two lines
            break
        if i + 1 < len(lines) and stripped.startswith("On ") and lines[i + 1].strip().endswith("wrote:"):
            break
        if stripped.startswith(">"):
            rest = [ln.strip() for ln in lines[i:]]
            if all(not r or r.startswith(">") for r in rest):
                break
            continue  # an inline quote in the middle: drop the quoted line, keep the answer under it
        keep.append(line)
    return "\n".join(keep).strip()
