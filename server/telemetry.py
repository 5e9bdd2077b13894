"""Prometheus metrics of the HTTP service (prometheus-client), served at /metrics.

Counters and the latency histogram are updated by the guard on every tool call; pool, outbox and
session gauges are read at scrape time. Labels carry tool names, roles and outcomes only, never
ids or personal data (and so stay low-cardinality)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

TOOL_CALLS = Counter("crm_tool_calls", "MCP tool calls by tool, role and outcome",
                     ["tool", "role", "outcome"], registry=REGISTRY)
TOOL_LATENCY = Histogram("crm_tool_call_duration_seconds", "Tool call latency", ["tool"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20))
POOL_SIZE = Gauge("crm_db_pool_size", "Open database connections in the pool", registry=REGISTRY)
POOL_IN_USE = Gauge("crm_db_pool_in_use", "Pool connections checked out", registry=REGISTRY)
POOL_MAX = Gauge("crm_db_pool_max_size", "Configured pool maximum", registry=REGISTRY)
OUTBOX = Gauge("crm_outbox_messages", "Outbound messages by delivery status (pending, failed)", ["status"],
               registry=REGISTRY)
SESSIONS = Gauge("crm_http_sessions", "Open Streamable HTTP sessions (2025-era clients)", registry=REGISTRY)
UP = Gauge("crm_database_up", "1 if the last scrape reached the database", registry=REGISTRY)


def observe_call(tool: str, role: str, outcome: str, seconds: float) -> None:
    TOOL_CALLS.labels(tool, role, outcome).inc()
    TOOL_LATENCY.labels(tool).observe(seconds)


async def render(pool: Any, sessions: int) -> tuple[bytes, str]:
    POOL_SIZE.set(pool.get_size())
    POOL_IN_USE.set(pool.get_size() - pool.get_idle_size())
    POOL_MAX.set(pool.get_max_size())
    SESSIONS.set(sessions)
    try:
        with anyio.fail_after(3):
            rows = await pool.fetch(
                "SELECT delivery_status, count(*) AS n FROM messages WHERE delivery_status IN ('pending', 'failed') "
                "GROUP BY delivery_status")
        counts = {r["delivery_status"]: r["n"] for r in rows}
        for status in ("pending", "failed"):
            OUTBOX.labels(status).set(counts.get(status, 0))
        UP.set(1)
    except Exception as exc:  # a scrape must answer even when the database does not
        log.warning("metrics: database unavailable (%s)", type(exc).__name__)
        UP.set(0)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
