"""What the agent tests share: `crm-mcp agent` processes (offline or with a model brain), their
JSON log, the replies they send, and draining what the demo data left waiting before a test."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import asyncpg

from .conftest import REPO, call, server_env
from .webform_helpers import stop_process

# Conversations an agent would still claim: active, an unfinished ticket that is not escalated, and
# a customer message after the last agent or human reply.
WAITING_SQL = """SELECT count(*) FROM conversations v WHERE v.status = 'active' AND EXISTS (
    SELECT 1 FROM tickets t WHERE t.conversation_id = v.id AND t.status IN ('open', 'in_progress', 'waiting'))
  AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = v.id AND m.role = 'customer'
    AND m.created_at > coalesce((SELECT max(created_at) FROM messages r WHERE r.conversation_id = v.id
      AND r.role IN ('agent', 'human')), '-infinity'))"""


@contextmanager
def agent_process(url: str, token: str, *args: str, env: dict[str, str] | None = None,
                  log_prefix: str = "crm-agent-") -> Iterator[subprocess.Popen[bytes]]:
    """`crm-mcp agent --server URL` with the token; its stderr (the JSON log) in a temp file."""
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "agent", "--server", url, "--log-level", "INFO", *args],
                            env={**server_env("postgresql://unused/"), "CRM_TOKEN": token, **(env or {})}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        stop_process(proc)
        log.close()


def agent_log(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    with open(proc.log_path, encoding="utf-8") as f:  # type: ignore[attr-defined]
        return [json.loads(line) for line in f if line.startswith("{")]


async def agent_replies(staff: Any, conversation_id: str, timeout: float = 30.0, at_least: int = 1) -> list[dict[str, Any]]:
    with anyio.fail_after(timeout):
        while True:
            conv = await call(staff, "get_conversation", conversation_id=conversation_id, limit=100)
            replies = [m for m in conv["messages"] if m["role"] == "agent"]
            if len(replies) >= at_least:
                return replies
            await anyio.sleep(0.1)


async def drain_waiting(dsn: str, url: str, token: str, timeout: float) -> None:
    """An offline agent answers whatever is waiting (the demo's messages, earlier tests') so the
    next agent claims the test's own message."""
    with agent_process(url, token, "--wait-s", "1"):
        conn = await asyncpg.connect(dsn)
        try:
            with anyio.fail_after(timeout):
                while await conn.fetchval(WAITING_SQL):
                    await anyio.sleep(0.2)
        finally:
            await conn.close()
