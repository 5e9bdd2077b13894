"""Replicas: two `crm-mcp serve --http` processes on one PostgreSQL.

1. Bridges spread concurrent ingest_message load across both, every message delivered twice
   (once to each replica, as a webhook retry landing behind a load balancer would be): each
   channel message is stored exactly once, nothing is lost, one customer per sender.
2. Two offline agents (`crm-mcp agent`), one per replica, answer each conversation exactly once.
3. Background work runs in one replica only (the advisory-lock leader in server/background.py);
   when the leader is killed the other takes over."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import asyncpg
import pytest

from crm_mcp.server.background import LEADER_LOCK_KEY

from .conftest import call
from .http_server import _started, bearer_client, make_token, result_text
from .agent_helpers import agent_log, agent_process

SENDERS, PER_SENDER, BRIDGES_PER_REPLICA = 12, 6, 3
pytestmark = pytest.mark.anyio

LEADER_LINE = "background leader: this process runs the SLA sweep"


async def test_two_replicas_store_every_message_once_under_concurrent_duplicated_load(db_dsn: str) -> None:
    token = await make_token(db_dsn, "replica-bridge", "bridge")
    with _started(db_dsn, (), {}) as a, _started(db_dsn, (), {}) as b:
        results: dict[str, list[dict[str, Any]]] = {}
        errors: list[str] = []
        # Every message twice, to different replicas, in shuffled order across the bridges.
        work = [(f"rep-{s}-{k}", s, k) for s in range(SENDERS) for k in range(PER_SENDER)]
        queues: list[list[tuple[str, int, int]]] = [[] for _ in range(2 * BRIDGES_PER_REPLICA)]
        for n, item in enumerate(work):
            queues[n % BRIDGES_PER_REPLICA].append(item)  # first delivery: replica a
            queues[BRIDGES_PER_REPLICA + (n + 1) % BRIDGES_PER_REPLICA].insert(0, item)  # retry: replica b, reversed

        async def bridge(url: str, items: list[tuple[str, int, int]]) -> None:
            async with bearer_client(url, token) as client:
                for cmid, s, k in items:
                    res = await client.call_tool("ingest_message", {
                        "channel": "email" if k % 2 == 0 else "web_form", "channel_message_id": cmid,
                        "sender": {"email": f"replica.sender{s}@example.com", "name": f"Sender {s}"},
                        "content": f"Message {k} from sender {s}: my invoice export fails",
                    })
                    if res.is_error:
                        errors.append(result_text(res))
                    else:
                        results.setdefault(cmid, []).append(res.structured_content)

        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for i, q in enumerate(queues):
                    tg.start_soon(bridge, (a if i < BRIDGES_PER_REPLICA else b).url, q)
        assert not errors, errors[:3]
        for srv in (a, b):
            assert "Traceback" not in srv.log(), srv.log()[-3000:]

    total = SENDERS * PER_SENDER
    assert len(results) == total
    for cmid, pair in results.items():
        assert len(pair) == 2, cmid
        assert sorted(r["duplicate"] for r in pair) == [False, True], (cmid, pair)
        assert pair[0]["message_id"] == pair[1]["message_id"], cmid
        assert pair[0]["ticket"]["ticket_number"] == pair[1]["ticket"]["ticket_number"], cmid
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == total
        assert await conn.fetchval("SELECT count(DISTINCT (channel, channel_message_id)) FROM messages") == total
        assert await conn.fetchval("SELECT count(*) FROM customers") == SENDERS
        assert await conn.fetchval("SELECT count(*) FROM customer_identifiers") == SENDERS
        assert await conn.fetchval("SELECT count(*) FROM conversations") == SENDERS
        assert await conn.fetchval("SELECT count(*) FROM tickets") == SENDERS
        assert set(await conn.fetch("SELECT DISTINCT total_interactions FROM customers")) == {(PER_SENDER,)}
        assert set(await conn.fetch("SELECT DISTINCT message_count FROM conversations")) == {(PER_SENDER,)}
        assert await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE metric_type = 'message_volume'") == total
        assert await conn.fetchval("SELECT count(DISTINCT ticket_number) FROM tickets") == SENDERS
    finally:
        await conn.close()


async def test_two_agents_on_two_replicas_answer_each_conversation_once(db_dsn: str) -> None:
    bridge_token = await make_token(db_dsn, "replica-agents-bridge", "bridge")
    agent_token = await make_token(db_dsn, "replica-agents-agent", "agent")
    admin_token = await make_token(db_dsn, "replica-agents-admin", "admin")
    n = 8
    # A refund dispute: the agents' rules escalate it with the holding reply, no knowledge base needed.
    text = "You charged my card twice this month. I dispute this charge and I want my money back now."
    with _started(db_dsn, (), {}) as a, _started(db_dsn, (), {}) as b:
        with agent_process(a.url, agent_token, "--wait-s", "5") as ag1, agent_process(b.url, agent_token, "--wait-s", "5") as ag2:
            convs: dict[int, str] = {}

            async def deliver(i: int) -> None:
                for srv in ((a, b) if i % 2 else (b, a)):  # each message to both replicas
                    async with bearer_client(srv.url, bridge_token) as bridge:
                        r = await call(bridge, "ingest_message", channel="web_form", channel_message_id=f"agents-{i}",
                                       sender={"email": f"agents.replica{i}@example.com", "name": f"Agent Test {i}"}, content=text)
                        convs[i] = r["conversation"]["conversation_id"]

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(deliver, i)
                async with bearer_client(a.url, admin_token) as staff:
                    async def replies() -> dict[int, int]:
                        out = {}
                        for i, cid in convs.items():
                            conv = await call(staff, "get_conversation", conversation_id=cid, limit=100)
                            out[i] = sum(m["role"] == "agent" for m in conv["messages"])
                        return out

                    while min((await replies()).values()) < 1:
                        await anyio.sleep(0.2)
                    await anyio.sleep(2)  # time for a second, wrong answer to show up
                    assert set((await replies()).values()) == {1}
        turns = [t for t in agent_log(ag1) + agent_log(ag2) if t["event"] == "agent_turn"]
        assert len(turns) == n, turns
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == n
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status = 'escalated'") == n
    finally:
        await conn.close()


async def _leader_holders(conn: asyncpg.Connection) -> int:
    """Sessions holding the leader lock (a bigint advisory key is split into classid:objid)."""
    return await conn.fetchval(
        """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND (classid::bigint << 32 | objid::bigint) = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LEADER_LOCK_KEY)


async def _wait_for(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await anyio.sleep(0.1)
    return False


async def test_background_work_runs_in_one_replica_and_moves_when_the_leader_dies(db_dsn: str) -> None:
    env = {"CRM_SLA_CHECK_INTERVAL_S": "0.2", "CRM_LOG_LEVEL": "INFO"}
    conn = await asyncpg.connect(db_dsn)
    try:
        with _started(db_dsn, ("--no-auth",), env) as a, _started(db_dsn, ("--no-auth",), env) as b:
            assert await _wait_for(lambda: anyio.to_thread.run_sync(lambda: LEADER_LINE in a.log() + b.log()), 20)
            await anyio.sleep(1.5)  # several sweep intervals: the follower keeps trying and must keep failing
            leaders = [s for s in (a, b) if LEADER_LINE in s.log()]
            assert len(leaders) == 1, [s.log()[-2000:] for s in (a, b)]
            assert await _leader_holders(conn) == 1
            leader, follower = leaders[0], (b if leaders[0] is a else a)

            os.kill(leader.proc.pid, signal.SIGKILL)  # no clean shutdown: PostgreSQL must notice
            leader.proc.wait(10)
            assert await _wait_for(lambda: anyio.to_thread.run_sync(lambda: LEADER_LINE in follower.log()), 15), \
                follower.log()[-2000:]
            assert await _leader_holders(conn) == 1
            assert follower.proc.poll() is None
        assert "Traceback" not in follower.log(), follower.log()[-3000:]
    finally:
        await conn.close()
