"""What a newcomer meets on the command line: a wrong input is one line naming what was wrong and
what to do (exit 2 for usage and configuration, 1 for operational trouble), never a traceback;
the demo stays fresh and can be reset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import pytest

from crm_mcp.server.app import open_crm
from crm_mcp.server.config import load_settings
from crm_mcp.server.demo import load_demo
from crm_mcp.tools import tickets

from .conftest import REPO, server_env

pytestmark = pytest.mark.anyio
UNREACHABLE = "postgresql://crm:secret-pw@127.0.0.1:1/nowhere"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    base["CRM_DATABASE_URL"] = UNREACHABLE
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", *args], env=base, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, input="")


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    err = out.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("crm-mcp: "), err
    return err


@pytest.mark.parametrize(("args", "env", "code", "says"), [
    (("kb", "search", "refund", "--category", "nonsense"), {}, 2, ["--category", "'nonsense'", "billing", "troubleshooting"]),
    (("kb", "search", "refund", "--limit", "0"), {}, 2, ["--limit", "between 1 and 20", "got 0"]),
    (("serve",), {"CRM_TOOLSETS": "bogus"}, 2, ["CRM_TOOLSETS", "bogus", "customers", "commerce", "all"]),
    (("serve", "--toolsets", "tickets,nope"), {}, 2, ["nope", "knowledge"]),
    (("serve",), {}, 1, ["cannot connect to PostgreSQL at 127.0.0.1:1/nowhere", "CRM_DATABASE_URL"]),
    (("db", "status"), {}, 1, ["cannot connect", "embedded database"]),
    (("kb", "search", "refund"), {}, 1, ["cannot connect"]),
])
def test_wrong_input_is_one_line_not_a_traceback(args: tuple[str, ...], env: dict[str, str], code: int, says: list[str]) -> None:
    out = _run(*args, env=env)
    err = _one_line(out)
    assert out.returncode == code, err
    for word in says:
        assert word in err, (word, err)
    assert "secret-pw" not in err  # the password never reaches the terminal


def test_valid_toolsets_still_accepted() -> None:
    assert load_settings(toolsets=" Tickets , customers,tickets ").toolsets == "tickets,customers"
    assert load_settings(toolsets="all").toolsets == "all"


async def test_demo_open_tickets_are_within_sla_after_loading(db_dsn: str) -> None:
    settings = load_settings(database_url=db_dsn)
    async with open_crm(settings, background=False) as crm:
        await load_demo(crm)
        async with crm.pool.acquire() as conn:
            late = await conn.fetch(
                "SELECT ticket_number FROM tickets WHERE status IN ('open', 'in_progress', 'waiting') AND sla_due_at <= now()")
            unfinished = await conn.fetchval("SELECT count(*) FROM tickets WHERE status IN ('open', 'in_progress', 'waiting')")
        assert late == [] and unfinished >= 5
        assert await tickets.sla_sweep(crm) == []  # the first sweep of a fresh demo escalates nothing


async def test_demo_reset_reloads_and_refuses_over_other_data(db_dsn: str) -> None:
    env = server_env(db_dsn)
    cmd = [sys.executable, "-m", "crm_mcp.server.cli"]
    first = subprocess.run([*cmd, "seed-demo"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    conn = await asyncpg.connect(db_dsn)
    try:
        demo = json.loads((REPO / "server" / "demo" / "demo_data.json").read_text())
        # the demo ages: its deadlines pass and the sweep escalates it
        await conn.execute("UPDATE tickets SET sla_due_at = now() - interval '1 hour' WHERE status IN ('open', 'in_progress', 'waiting')")
        await conn.execute("UPDATE tickets SET status = 'escalated', escalation_reason = 'SLA breached', sla_breached_at = now() "
                           "WHERE status IN ('open', 'in_progress', 'waiting')")
        reset = subprocess.run([*cmd, "demo", "reset"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert reset.returncode == 0, reset.stderr
        assert json.loads(reset.stdout)["loaded"] is True
        assert await conn.fetchval("SELECT count(*) FROM customers") == len(demo["customers"])
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE sla_breached_at IS NOT NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status IN ('open', 'in_progress', 'waiting') "
                                   "AND sla_due_at > now()") >= 5
        assert await conn.fetchval("SELECT min(ticket_number) FROM tickets") == "TKT-0001"

        # a customer the demo does not know: refused with one line, nothing deleted
        cid = await conn.fetchval("INSERT INTO customers (name) VALUES ('Real Person') RETURNING id")
        await conn.execute("INSERT INTO customer_identifiers (customer_id, kind, value) VALUES ($1, 'email', 'real@example.com')", cid)
        refused = subprocess.run([*cmd, "demo", "reset"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        err = _one_line(refused)
        assert refused.returncode == 1 and "1 customers" in err and "--force" in err
        assert await conn.fetchval("SELECT count(*) FROM customers") == len(demo["customers"]) + 1

        forced = subprocess.run([*cmd, "demo", "reset", "--force"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert forced.returncode == 0, forced.stderr
        assert await conn.fetchval("SELECT count(*) FROM customers WHERE id = $1", cid) == 0
        assert await conn.fetchval("SELECT count(*) FROM customers") == len(demo["customers"])
    finally:
        await conn.close()
