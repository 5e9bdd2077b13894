"""Web form throughput: form submissions per second and submit-to-stored latency through
`crm-mcp bridge webform` (HTTP form -> bridge -> MCP over Streamable HTTP -> CRM), against the
bare ingest_message floor over the same MCP transport, same server, same concurrency.

    python -m bench.webform [--submissions 200] [--clients 4]

A submission is what a browser does: GET / (form token and CSRF cookie, not timed) then the POST,
timed until the confirmation page, which the bridge answers only after ingest_message committed:
so the POST's latency is submit-to-stored. The floor is ingest_message called directly with an
MCP client over the same HTTP transport, the same message shape, the same number of clients.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO, SAMPLE_TEXTS, Row, bridge_process, create_db, drop_db, embedded_postgres, http_server, log, machine,
    pg_version, print_table, spread, write_json,
)

TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


def message(kind: str, w: int, i: int) -> dict[str, str]:
    return {"name": f"Bench Sender {w}-{i}", "email": f"{kind}{w}x{i}@example.org", "subject": "Question about my account",
            "message": SAMPLE_TEXTS[(w * 7 + i) % len(SAMPLE_TEXTS)]}


async def run(admin_dsn: str, n: int, clients: int) -> dict[str, Any]:
    import httpx
    from mcp import Client

    results: dict[str, Any] = {}
    dsn = await create_db(admin_dsn)
    try:
        with http_server(dsn) as (url, _pid), bridge_process(
                dsn, url, "webform", name="web form", CRM_WEBFORM_SECRET="bench-secret",
                CRM_WEBFORM_RATE_LIMIT="1000000/1") as (_proc, base):
            # floor: ingest_message over the same MCP transport, `clients` MCP clients
            async with Client(url) as c0:  # one connection, as the bridge holds one

                async def ingest(w: int, i: int) -> float:
                    m = message("floor", w, i)
                    s = time.perf_counter()
                    res = await c0.call_tool("ingest_message", {
                        "channel": "web_form", "channel_message_id": f"bench-floor-{w}-{i}",
                        "sender": {"email": m["email"], "name": m["name"]}, "subject": m["subject"], "content": m["message"]})
                    assert not res.is_error, res
                    return time.perf_counter() - s

                await spread(ingest, clients * 2, clients)  # warm-up
                log(f"floor: {n} x ingest_message over HTTP, {clients} concurrent")
                results["ingest_floor"] = await spread(ingest, n, clients)

            browsers = [httpx.AsyncClient(timeout=60) for _ in range(clients)]
            try:
                async def submit(w: int, i: int) -> float:
                    b = browsers[w]
                    token = TOKEN.search((await b.get(f"{base}/")).text).group(1)
                    s = time.perf_counter()
                    r = await b.post(f"{base}/", data={"form_token": token, **message("form", w, i)})
                    took = time.perf_counter() - s
                    assert r.status_code == 200 and "TKT-" in r.text, r.status_code
                    return took

                await spread(submit, clients * 2, clients)
                log(f"web form: {n} submissions, {clients} concurrent browsers")
                results["form"] = await spread(submit, n, clients)
            finally:
                for b in browsers:
                    await b.aclose()
    finally:
        await drop_db(admin_dsn, dsn)
    return results


def rows(res: dict[str, Any]) -> list[Row]:
    f, fl = res["form"], res["ingest_floor"]
    return [
        Row("form submissions / s", f["ops_per_s"], "/s", fl["ops_per_s"], "ingest_message over HTTP", "rate"),
        Row("submit-to-stored p50", f["p50_ms"], "ms", fl["p50_ms"], "ingest_message p50", "latency"),
        Row("submit-to-stored p95", f["p95_ms"], "ms", fl["p95_ms"], "ingest_message p95", "latency"),
    ]


async def main_async(args: argparse.Namespace) -> None:
    with embedded_postgres() as pg:
        version = await pg_version(pg.admin_dsn)
        res = await run(pg.admin_dsn, args.submissions, args.clients)
    table = rows(res)
    print_table(table, f"web form ({args.submissions} submissions, {args.clients} clients; x floor = cost over bare ingest_message)")
    f, fl = res["form"], res["ingest_floor"]
    print(f"\nratios: throughput {f['ops_per_s'] / fl['ops_per_s']:.2f} of the floor; "
          f"p95 {f['p95_ms'] / fl['p95_ms']:.2f}x the floor")
    path = write_json({"machine": machine(version), "webform": res, "rows": [r.as_dict() for r in table]},
                      Path(REPO / "bench" / "results" / "webform.json"))
    log(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--submissions", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
