"""Email intake throughput: mails per second from IMAP APPEND to stored in the CRM, through
`crm-mcp bridge email` (Dovecot IMAP IDLE -> bridge -> MCP over Streamable HTTP -> CRM), against
the bare ingest_message floor over the same MCP transport, one call at a time as the bridge makes them.

    python -m bench.email [--mails 300]

Needs Dovecot (apt-get install dovecot-imapd); the mailbox is started like the tests start it
(tests/email_helpers.py). The mails are APPENDed in one IMAP session as fast as Dovecot takes them;
a mail's latency is from its APPEND returning to its row's created_at in the CRM (same clock)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO, SAMPLE_TEXTS, Row, bridge_process, create_db, drop_db, embedded_postgres, http_server, log, machine,
    pg_version, print_table, summarize, write_json,
)


def raw_mail(i: int) -> bytes:
    from email.message import EmailMessage

    m = EmailMessage()
    m["From"] = f"Bench Sender {i} <bench{i}@example.org>"
    m["To"] = "support@example.com"
    m["Subject"] = "Question about my account"
    m["Message-ID"] = f"<bench-{i}@example.org>"
    m.set_content(SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] + "\n\n-- \nBench Sender\n")
    return m.as_bytes()


def mailbox_env(imap_port: int, smtp_port: int) -> dict[str, str]:
    return {"CRM_SUPPORT_ADDRESS": "support@example.com", "CRM_IMAP_HOST": "127.0.0.1", "CRM_IMAP_PORT": str(imap_port),
            "CRM_IMAP_USER": "support@example.com", "CRM_IMAP_PASSWORD": "imap-test-secret", "CRM_SMTP_HOST": "127.0.0.1",
            "CRM_SMTP_PORT": str(smtp_port), "CRM_LOG_LEVEL": "WARNING"}


async def run(admin_dsn: str, n: int) -> dict[str, Any]:
    from mcp import Client

    from tests.email_helpers import dovecot, smtp_sink

    results: dict[str, Any] = {}
    dsn = await create_db(admin_dsn)
    try:
        with http_server(dsn) as (url, _pid), dovecot() as dv, smtp_sink() as sink:
            async with Client(url) as c0:
                async def ingest(i: int) -> float:
                    s = time.perf_counter()
                    res = await c0.call_tool("ingest_message", {
                        "channel": "email", "channel_message_id": f"<floor-{i}@example.org>",
                        "sender": {"email": f"floor{i}@example.org"}, "subject": "Question about my account",
                        "content": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]})
                    assert not res.is_error, res
                    return time.perf_counter() - s

                for i in range(10):
                    await ingest(-1 - i)
                log(f"floor: {n} x ingest_message over HTTP, one at a time")
                t0 = time.perf_counter()
                lat = [await ingest(i) for i in range(n)]
                results["ingest_floor"] = summarize(lat, time.perf_counter() - t0)

            with bridge_process(dsn, url, "email", name="email", stop_s=20, **mailbox_env(dv.port, sink.port)):
                imap = dv.imap()
                session = await imap._session()
                appended: dict[str, float] = {}
                log(f"email: APPEND {n} mails, waiting for each to be stored")
                t0 = time.time()
                for i in range(n):
                    r = await session.append(raw_mail(i), mailbox="INBOX")
                    assert r.result == "OK", r
                    appended[f"<bench-{i}@example.org>"] = time.time()
                await session.logout()
                conn = await asyncpg.connect(dsn)
                try:
                    deadline = time.monotonic() + max(120, n)
                    while True:
                        rows = await conn.fetch("SELECT channel_message_id, extract(epoch FROM created_at)::float8 AS at "
                                                "FROM messages WHERE channel_message_id LIKE '<bench-%'")
                        if len(rows) >= n or time.monotonic() > deadline:
                            break
                        await anyio.sleep(0.2)
                finally:
                    await conn.close()
                assert len(rows) == n, f"{len(rows)} of {n} mails stored"
                last = max(r["at"] for r in rows)
                lat = [r["at"] - appended[r["channel_message_id"]] for r in rows]
                results["email"] = summarize(lat, last - t0)
                results["append_s"] = round(max(appended.values()) - t0, 3)
    finally:
        await drop_db(admin_dsn, dsn)
    return results


def rows(res: dict[str, Any]) -> list[Row]:
    e, fl = res["email"], res["ingest_floor"]
    return [
        Row("mails / s (IMAP to stored)", e["ops_per_s"], "/s", fl["ops_per_s"], "ingest_message over HTTP, serial", "rate"),
        Row("append-to-stored p50", e["p50_ms"], "ms", fl["p50_ms"], "ingest_message p50", "latency"),
        Row("append-to-stored p95", e["p95_ms"], "ms", fl["p95_ms"], "ingest_message p95", "latency"),
    ]


async def main_async(args: argparse.Namespace) -> None:
    with embedded_postgres() as pg:
        version = await pg_version(pg.admin_dsn)
        res = await run(pg.admin_dsn, args.mails)
    table = rows(res)
    print_table(table, f"email ({args.mails} mails appended in {res['append_s']} s; x floor = cost over bare ingest_message)")
    path = write_json({"machine": machine(version), "email": res, "rows": [r.as_dict() for r in table]},
                      Path(REPO / "bench" / "results" / "email.json"))
    log(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mails", type=int, default=300)
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
