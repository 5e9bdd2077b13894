"""Real local mail servers for the email bridge tests: Dovecot (IMAP with IDLE) in the foreground
with a temporary config on a loopback port, an aiosmtpd server collecting what the bridge sends,
and the bridge itself as a process (`crm-mcp bridge email`)."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, server_env
from .webform_helpers import TOKENS, _wait_http, free_port, stop_process

SUPPORT = "support@example.com"
PASSWORD = "imap-test-secret"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or (str(Path("/usr/sbin/dovecot")) if Path("/usr/sbin/dovecot").exists() else None)


@dataclass
class Dovecot:
    root: Path
    port: int
    proc: subprocess.Popen
    binary: str = "dovecot"

    def imap(self) -> "ImapDriver":
        return ImapDriver(self.port)

    def restart(self, down_s: float = 1.0) -> None:
        """Stop the server (every IMAP connection drops), wait, and start it again on the same port and mail."""
        stop_process(self.proc)
        time.sleep(down_s)
        log = open(self.root / "stdout.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.root / "dovecot.conf")], stdout=log, stderr=log)
        _wait_greeting(self.port, self.proc, self.root)


_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
"""


@contextmanager
def dovecot() -> Iterator[Dovecot]:
    """Dovecot as the current user; as root (CI), its login and mail processes run as the Debian
    package's unprivileged users (Dovecot refuses to run its login process as root)."""
    binary = dovecot_binary()
    if binary is None:
        pytest.fail("dovecot is not installed: apt-get install -y dovecot-imapd (as .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="crm-email-dovecot-"))
    root.chmod(0o755)  # the mail user must reach its home
    if os.geteuid() == 0:
        mail = pwd.getpwnam("dovecot")
        internal_user, internal_group, login_user = "dovecot", grp.getgrgid(mail.pw_gid).gr_name, "dovenull"
        uid, gid = mail.pw_uid, mail.pw_gid
    else:
        me = getpass.getuser()
        uid, gid = os.getuid(), os.getgid()
        internal_user, internal_group, login_user = me, grp.getgrgid(gid).gr_name, me
    port = free_port()
    for d in ("run", "state", "home"):
        (root / d).mkdir()
    os.chown(root / "home", uid, gid)
    (root / "passwd").write_text(f"{SUPPORT}:{{PLAIN}}{PASSWORD}\n")
    conf = root / "dovecot.conf"
    conf.write_text(_CONF.format(root=root, port=port, uid=uid, gid=gid, internal_user=internal_user,
                                 internal_group=internal_group, login_user=login_user))
    log = open(root / "stdout.log", "wb")
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=log, stderr=log)
    server = Dovecot(root, port, proc, binary)
    try:
        _wait_greeting(port, proc, root)
        yield server
    finally:
        stop_process(server.proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_greeting(port: int, proc: subprocess.Popen, root: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dovecot exited: {(root / 'stdout.log').read_text()[-2000:]}")
        try:  # the greeting is enough: a login later proves the rest
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class ImapDriver:
    """The test's own IMAP client (aioimaplib, like the bridge): deliver mail by APPEND."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def _session(self):
        import aioimaplib

        c = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=10)
        await c.wait_hello_from_server()
        r = await c.login(SUPPORT, PASSWORD)
        assert r.result == "OK", r
        return c

    async def noop(self) -> None:
        c = await self._session()
        await c.logout()

    async def append(self, *raws: bytes, folder: str = "INBOX") -> None:
        c = await self._session()
        try:
            for raw in raws:
                r = await c.append(raw, mailbox=folder)
                assert r.result == "OK", r
        finally:
            await c.logout()

    async def recreate(self, folder: str) -> None:
        """DELETE and CREATE a folder: the server gives it a new UIDVALIDITY."""
        c = await self._session()
        try:
            await c.delete(folder)
            r = await c.create(folder)
            assert r.result == "OK", r
        finally:
            await c.logout()

    async def uidvalidity(self, folder: str) -> int:
        import re

        c = await self._session()
        try:
            r = await c.select(folder)
            return int(next(m.group(1) for line in r.lines if (m := re.search(rb"UIDVALIDITY (\d+)", line))))
        finally:
            await c.logout()


def mail(*, sender: str = "Ana Lima <ana@example.org>", subject: str = "CSV export fails", body: str = "Every CSV export stops at 99%.",
         message_id: str | None = None, in_reply_to: str | None = None, references: str | None = None,
         headers: dict[str, str] | None = None, html: str | None = None, date: str = "Mon, 30 Nov 2026 04:00:00 +0000") -> bytes:
    m = EmailMessage()
    if sender:
        m["From"] = sender
    m["To"] = SUPPORT
    m["Subject"] = subject
    m["Date"] = date
    m["Message-ID"] = message_id or f"<{os.urandom(6).hex()}@example.org>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    if references:
        m["References"] = references
    for k, v in (headers or {}).items():
        m[k] = v
    if html is not None and body is None:
        m.set_content(html, subtype="html")
    else:
        m.set_content(body)
        if html is not None:
            m.add_alternative(html, subtype="html")
    return m.as_bytes()


@dataclass
class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it is given."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.1)
        raise AssertionError(f"SMTP server got {len(self.messages)} message(s), expected {count}")


@contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    from aiosmtpd.controller import Controller

    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def email_env(dovecot_port: int, smtp_port: int, **extra: str) -> dict[str, str]:
    env = {"CRM_SUPPORT_ADDRESS": SUPPORT, "CRM_SUPPORT_NAME": "Acme Support",
           "CRM_IMAP_HOST": "127.0.0.1", "CRM_IMAP_PORT": str(dovecot_port), "CRM_IMAP_USER": SUPPORT,
           "CRM_IMAP_PASSWORD": PASSWORD, "CRM_SMTP_HOST": "127.0.0.1", "CRM_SMTP_PORT": str(smtp_port),
           "CRM_LOG_LEVEL": "INFO"}
    env.update(extra)
    return env


def start_email_bridge(server_url: str, dsn: str, tmp: Path, env: dict[str, str], *, port: int | None = None,
                       args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    log = open(tmp / f"email-bridge-{port}.log", "ab")
    full = server_env(dsn, **env)
    full.setdefault("CRM_TOKEN", TOKENS[dsn, server_url])
    proc = subprocess.Popen([*_cli(), "bridge", "email", "--server", server_url, "--port", str(port), "--wait-s", "2", *args],
                            env=full, cwd=str(REPO), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/healthz", proc)
    return proc, base


@contextmanager
def email_bridge(server_url: str, dsn: str, tmp: Path, env: dict[str, str], **kw: Any) -> Iterator[str]:
    proc, base = start_email_bridge(server_url, dsn, tmp, env, **kw)
    try:
        yield base
    finally:
        stop_process(proc)


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "crm_mcp.server.cli"]


def health(base: str) -> dict[str, Any]:
    return httpx.get(f"{base}/healthz", timeout=5).json()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
