"""The offline answering agent: messages answered per second by one and by two `crm-mcp agent`
processes, and ingest-to-reply p50/p95, against the bare tool-call floor.

    python -m bench.agent [--messages 40] [--paced 15]

One CRM over Streamable HTTP with tokens (the agent role, so the lease scoping is paid for), the
demo knowledge base, a question it answers. Customer messages are ingested by a bridge-role
client, one new customer each.

- floor: one client makes the same calls the agent makes for an answer, directly and in order:
  ingest_message -> claim_inbound -> search_knowledge_base -> send_response, over the same HTTP
  transport with the same tokens. No turn record, no process in between.
- agents: 1 and 2 agent processes. Paced: one message at a time, the next once it was answered
  (ingest-to-reply of an idle agent, long-poll wake-up included). Burst: all messages at once,
  answered per second from the first ingest to the last reply, and their ingest-to-reply.

Ingest-to-reply is read from the database: the customer message's created_at to the reply's,
for the floor and the agents alike."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO, Row, create_db, drop_db, embedded_postgres, free_port, log, machine, open_direct, pg_version, print_table,
    server_env, summarize, write_json,
)

KB_PARTS = ("account", "billing", "faq", "troubleshooting")
QUESTION = "Hi, I forgot my password and cannot sign in. How do I reset my password?"
REPLIES_SQL = """
SELECT m.id, m.created_at AS t_in,
       (SELECT min(r.created_at) FROM messages r WHERE r.conversation_id = m.conversation_id
          AND r.direction = 'outbound' AND r.role = 'agent' AND r.created_at >= m.created_at) AS t_out
FROM messages m WHERE m.id = ANY($1::uuid[])
"""


def start_server(dsn: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(dsn), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base + "/mcp"
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the CRM HTTP server did not start")
        time.sleep(0.2)


def start_agent(url: str, token: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "agent", "--server", url, "--wait-s", "5", "--log-level", "WARNING"],
        env={**server_env("postgresql://unused/"), "CRM_TOKEN": token}, cwd=str(REPO),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def client(url: str, token: str) -> Any:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http))  # type: ignore[arg-type]


async def call(c: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    res = await c.call_tool(tool, arguments)
    if res.is_error:
        raise RuntimeError(f"{tool}: {' '.join(getattr(x, 'text', '') for x in res.content)[:300]}")
    return res.structured_content


async def ingest(bridge: Any, tag: str) -> str:
    got = await call(bridge, "ingest_message", channel="web_form", channel_message_id=f"bench-agent-{tag}",
                     sender={"email": f"{tag}@bench.example", "name": "Bench Customer"}, content=QUESTION)
    return got["message_id"]


async def replies(conn: asyncpg.Connection, ids: list[str], timeout: float = 60.0) -> list[tuple[float, float]]:
    """(t_in, t_out) epoch seconds per message, once every one has an agent reply."""
    with anyio.fail_after(timeout):
        while True:
            rows = await conn.fetch(REPLIES_SQL, ids)
            if len(rows) == len(ids) and all(r["t_out"] is not None for r in rows):
                return [(r["t_in"].timestamp(), r["t_out"].timestamp()) for r in rows]
            await anyio.sleep(0.005)


def figures(pairs: list[tuple[float, float]]) -> dict[str, float]:
    span = max(o for _, o in pairs) - min(i for i, _ in pairs)
    return summarize([o - i for i, o in pairs], span)


async def floor(url: str, tokens: dict[str, str], conn: asyncpg.Connection, n: int) -> dict[str, float]:
    async with client(url, tokens["bridge"]) as bridge, client(url, tokens["agent1"]) as agent:
        async def one(tag: str) -> str:
            mid = await ingest(bridge, tag)
            work = (await call(agent, "claim_inbound"))["work"]
            assert work and work["message_id"] == mid, "the floor claims the message it just ingested"
            hit = await call(agent, "search_knowledge_base", query=QUESTION)
            assert hit["results"], "the demo knowledge base answers the question"
            await call(agent, "send_response", conversation_id=work["conversation_id"], body=hit["results"][0]["snippet"][:500],
                       idempotency_key=f"agent:{mid}")
            return mid

        for i in range(3):
            await one(f"floorwarm{i}-{uuid.uuid4().hex[:6]}")
        ids = [await one(f"floor{i}-{uuid.uuid4().hex[:6]}") for i in range(n)]
    return figures(await replies(conn, ids))


async def with_agents(url: str, tokens: dict[str, str], conn: asyncpg.Connection, agents: int, n: int,
                      paced: int) -> dict[str, Any]:
    procs = [start_agent(url, tokens[f"agent{k + 1}"]) for k in range(agents)]
    try:
        async with client(url, tokens["bridge"]) as bridge:
            run = uuid.uuid4().hex[:6]
            await replies(conn, [await ingest(bridge, f"warm{agents}-{k}-{run}") for k in range(agents * 2)], timeout=90)
            paced_pairs = []
            for i in range(paced):
                paced_pairs += await replies(conn, [await ingest(bridge, f"paced{agents}-{i}-{run}")])
            ids = [await ingest(bridge, f"burst{agents}-{i}-{run}") for i in range(n)]
            burst = await replies(conn, ids, timeout=120)
        with anyio.move_on_after(10):  # each agent records its turn just after the reply
            while await conn.fetchval("SELECT count(*) FROM agent_turns WHERE message_id = ANY($1::uuid[])", ids) < len(ids):
                await anyio.sleep(0.05)
        decided = await conn.fetch("SELECT decision, count(*) AS n FROM agent_turns WHERE message_id = ANY($1::uuid[]) "
                                   "GROUP BY decision", ids)
    finally:
        for p in procs:
            stop(p)
    return {"paced": figures(paced_pairs), "burst": figures(burst), "decisions": {r["decision"]: r["n"] for r in decided}}


async def run(admin_dsn: str, n: int, paced: int) -> dict[str, Any]:
    from crm_mcp.server.auth import create_token
    from crm_mcp.server.demo import demo_dir
    from crm_mcp.tools import knowledge

    dsn = await create_db(admin_dsn)
    try:
        log(f"importing part of the demo knowledge base ({', '.join(KB_PARTS)})")
        async with open_direct(dsn) as crm:
            for part in KB_PARTS:  # enough for search to choose among; all of it takes ~40 s to embed here
                await knowledge.import_folder(crm, demo_dir() / "kb" / part, source=f"product-docs/{part}")
        conn = await asyncpg.connect(dsn)
        try:
            tokens = {name: await create_token(conn, f"bench-{name}", role)
                      for name, role in (("bridge", "bridge"), ("agent1", "agent"), ("agent2", "agent"))}
            proc, url = start_server(dsn)
            try:
                log(f"floor: {n} x ingest -> claim_inbound -> search_knowledge_base -> send_response, one client")
                results: dict[str, Any] = {"floor": await floor(url, tokens, conn, n)}
                for k in (1, 2):
                    log(f"{k} agent process(es): {paced} paced messages, then a burst of {n}")
                    results[f"agents_{k}"] = await with_agents(url, tokens, conn, k, n, paced)
            finally:
                stop(proc)
        finally:
            await conn.close()
    finally:
        await drop_db(admin_dsn, dsn)
    return results


def rows(res: dict[str, Any]) -> list[Row]:
    fl = res["floor"]
    out = []
    for k in (1, 2):
        a = res[f"agents_{k}"]
        out += [
            Row(f"{k} agent(s): answered / s (burst)", a["burst"]["ops_per_s"], "/s", fl["ops_per_s"], "floor, one client", "rate"),
            Row(f"{k} agent(s): ingest-to-reply p50 (paced)", a["paced"]["p50_ms"], "ms", fl["p50_ms"], "floor p50", "latency"),
            Row(f"{k} agent(s): ingest-to-reply p95 (paced)", a["paced"]["p95_ms"], "ms", fl["p95_ms"], "floor p95", "latency"),
            Row(f"{k} agent(s): ingest-to-reply p50 (burst)", a["burst"]["p50_ms"], "ms", None, "queueing included", "latency"),
            Row(f"{k} agent(s): ingest-to-reply p95 (burst)", a["burst"]["p95_ms"], "ms", None, "queueing included", "latency"),
        ]
    return out


async def main_async(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    with embedded_postgres() as pg:
        version = await pg_version(pg.admin_dsn)
        res = await run(pg.admin_dsn, args.messages, args.paced)
    table = rows(res)
    print_table(table, f"offline agent ({args.messages} burst + {args.paced} paced messages; x floor = cost over the bare calls)")
    fl, a1, a2 = res["floor"], res["agents_1"], res["agents_2"]
    print(f"\nratios: answered/s of the floor: 1 agent {a1['burst']['ops_per_s'] / fl['ops_per_s']:.2f}, "
          f"2 agents {a2['burst']['ops_per_s'] / fl['ops_per_s']:.2f} (2 vs 1: {a2['burst']['ops_per_s'] / a1['burst']['ops_per_s']:.2f}x); "
          f"paced ingest-to-reply p50 {a1['paced']['p50_ms'] / fl['p50_ms']:.2f}x / p95 {a1['paced']['p95_ms'] / fl['p95_ms']:.2f}x "
          f"the floor (1 agent)")
    print(f"decisions in the bursts: 1 agent {a1['decisions']}, 2 agents {a2['decisions']}")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_json({"machine": machine(version), "agent": res, "rows": [r.as_dict() for r in table]},
                      Path(REPO / "bench" / "results" / "agent.json"))
    log(f"wrote {path} ({res['wall_s']} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=40, help="burst size per agent configuration, and floor messages")
    p.add_argument("--paced", type=int, default=15, help="messages sent one at a time per agent configuration")
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
