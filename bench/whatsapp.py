"""WhatsApp webhook throughput: signed webhooks per second and webhook-to-stored latency through
`crm-mcp bridge whatsapp` (provider webhook -> signature check -> bridge -> MCP over Streamable
HTTP -> CRM), for Twilio (form-encoded) and Meta (JSON), against the bare ingest_message floor
over the same MCP transport, same server, same concurrency.

    python -m bench.whatsapp [--webhooks 200] [--clients 4]

A webhook is answered only after ingest_message committed the message, so its latency is
webhook-to-stored. Every webhook is a new message from one of a few hundred numbers. The floor
is ingest_message called directly with an MCP client (the bridge's own call, minus the webhook).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO, SAMPLE_TEXTS, Row, bridge_process, create_db, drop_db, embedded_postgres, free_port, http_server, log, machine,
    pg_version, print_table, spread, write_json,
)

TWILIO = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "bench-twilio-token", "TWILIO_WHATSAPP_NUMBER": "+14155238886"}
META = {"META_APP_SECRET": "bench-meta-secret", "META_VERIFY_TOKEN": "bench-verify", "META_ACCESS_TOKEN": "bench-access",
        "META_PHONE_NUMBER_ID": "1065403522"}
# Replies are not part of this benchmark: the send APIs point at a closed port.
UNUSED = "http://127.0.0.1:9"


def number(w: int, i: int) -> str:
    return f"+1555{(w * 7919 + i) % 300:07d}"


def text(w: int, i: int) -> str:
    return SAMPLE_TEXTS[(w * 7 + i) % len(SAMPLE_TEXTS)]


def twilio_request(base: str, kind: str, w: int, i: int) -> tuple[dict[str, str], dict[str, str]]:
    from twilio.request_validator import RequestValidator

    sid = f"SM{kind}{w:04d}{i:06d}".ljust(34, "0")
    form = {"MessageSid": sid, "From": f"whatsapp:{number(w, i)}", "To": "whatsapp:+14155238886", "Body": text(w, i),
            "ProfileName": f"Bench {w}-{i}", "NumMedia": "0"}
    return form, {"X-Twilio-Signature": RequestValidator(TWILIO["TWILIO_AUTH_TOKEN"]).compute_signature(f"{base}/twilio", form)}


def meta_request(kind: str, w: int, i: int) -> tuple[bytes, dict[str, str]]:
    n = number(w, i).removeprefix("+")
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"phone_number_id": META["META_PHONE_NUMBER_ID"]},
        "contacts": [{"profile": {"name": f"Bench {w}-{i}"}, "wa_id": n}],
        "messages": [{"from": n, "id": f"wamid.{kind}.{w}.{i}", "timestamp": str(int(time.time())), "type": "text",
                      "text": {"body": text(w, i)}}]}}]}]}).encode()
    sig = "sha256=" + hmac.new(META["META_APP_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": sig}


async def run(admin_dsn: str, n: int, clients: int) -> dict[str, Any]:
    import httpx
    from mcp import Client

    results: dict[str, Any] = {}
    dsn = await create_db(admin_dsn)
    try:
        port = free_port()  # the bridge's public URL names it (Twilio signs the URL it posts to)
        with http_server(dsn) as (url, _pid), bridge_process(
                dsn, url, "whatsapp", name="WhatsApp", port=port, CRM_PUBLIC_URL=f"http://127.0.0.1:{port}",
                TWILIO_API_BASE=UNUSED, META_GRAPH_BASE=UNUSED, **TWILIO, **META) as (_proc, base):
            async with Client(url) as c0:  # one connection, as the bridge holds one

                async def ingest(w: int, i: int) -> float:
                    s = time.perf_counter()
                    res = await c0.call_tool("ingest_message", {
                        "channel": "whatsapp", "channel_message_id": f"bench-floor-{w}-{i}",
                        "sender": {"whatsapp": number(w, i), "name": f"Bench {w}-{i}"}, "content": text(w, i),
                        "metadata": {"provider": "meta", "type": "text"}})
                    assert not res.is_error, res
                    return time.perf_counter() - s

                await spread(ingest, clients * 2, clients)  # warm-up
                log(f"floor: {n} x ingest_message over HTTP, {clients} concurrent")
                results["ingest_floor"] = await spread(ingest, n, clients)

            providers = [httpx.AsyncClient(timeout=60) for _ in range(clients)]
            try:
                async def meta_hook(w: int, i: int, kind: str = "m") -> float:
                    body, headers = meta_request(kind, w, i)
                    s = time.perf_counter()
                    r = await providers[w].post(f"{base}/meta", content=body, headers=headers)
                    took = time.perf_counter() - s
                    assert r.status_code == 200, r.status_code
                    return took

                async def twilio_hook(w: int, i: int, kind: str = "t") -> float:
                    form, headers = twilio_request(base, kind, w, i)
                    s = time.perf_counter()
                    r = await providers[w].post(f"{base}/twilio", data=form, headers=headers)
                    took = time.perf_counter() - s
                    assert r.status_code == 200 and "<Response>" in r.text, r.status_code
                    return took

                await spread(lambda w, i: meta_hook(w, i, "wm"), clients * 2, clients)
                log(f"Meta: {n} webhooks, {clients} concurrent senders")
                results["meta"] = await spread(meta_hook, n, clients)
                await spread(lambda w, i: twilio_hook(w, i, "wt"), clients * 2, clients)
                log(f"Twilio: {n} webhooks, {clients} concurrent senders")
                results["twilio"] = await spread(twilio_hook, n, clients)
                log(f"Meta retries: {n} webhooks already stored (the provider's redelivery)")
                results["meta_retry"] = await spread(meta_hook, n, clients)
            finally:
                for c in providers:
                    await c.aclose()
    finally:
        await drop_db(admin_dsn, dsn)
    return results


def rows(res: dict[str, Any]) -> list[Row]:
    fl = res["ingest_floor"]
    out: list[Row] = []
    for key, label in (("meta", "Meta webhooks"), ("twilio", "Twilio webhooks"), ("meta_retry", "Meta redeliveries")):
        r = res[key]
        out += [Row(f"{label} / s", r["ops_per_s"], "/s", fl["ops_per_s"], "ingest_message over HTTP", "rate"),
                Row(f"{label} p95", r["p95_ms"], "ms", fl["p95_ms"], "ingest_message p95", "latency")]
    return out


async def main_async(args: argparse.Namespace) -> None:
    with embedded_postgres() as pg:
        version = await pg_version(pg.admin_dsn)
        res = await run(pg.admin_dsn, args.webhooks, args.clients)
    table = rows(res)
    print_table(table, f"WhatsApp webhooks ({args.webhooks} per figure, {args.clients} senders; x floor = cost over bare ingest_message)")
    fl = res["ingest_floor"]
    for key in ("meta", "twilio"):
        print(f"ratios ({key}): throughput {res[key]['ops_per_s'] / fl['ops_per_s']:.2f} of the floor; "
              f"p95 {res[key]['p95_ms'] / fl['p95_ms']:.2f}x the floor")
    path = write_json({"machine": machine(version), "whatsapp": res, "rows": [r.as_dict() for r in table]},
                      Path(args.json))
    log(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--webhooks", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "whatsapp.json"))
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
