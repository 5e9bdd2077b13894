"""Contracts generated from code, checked against files in the repository.

- One schema snapshot per tool in tests/snapshots/tools/<name>.json (title, description,
  annotations, input and output schema) and the tools/list order in tests/snapshots/tool_order.json,
  built in-process from the server the CLI builds. A changed, missing or extra snapshot fails;
  `CRM_UPDATE_SNAPSHOTS=1` rewrites them (then review the diff and commit it).
- README.md's generated blocks (tool table, ticket state machine) match scripts/readme.py.
- Every closed vocabulary in tools/vocabulary.py equals the CHECK constraint of each column that
  stores it in the migrated database."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import asyncpg
import pytest

from crm_mcp.server.app import build_server
from crm_mcp.server.config import Settings
from crm_mcp.server.roles import ROLES
from crm_mcp.tools import vocabulary as v
from crm_mcp.tools.plumbing.context import Crm

from .conftest import REPO, mcp_client

pytestmark = pytest.mark.anyio
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = "CRM_UPDATE_SNAPSHOTS"
HOW_TO_UPDATE = f"if intended, rerun with {UPDATE}=1 python -m pytest tests/test_contracts.py, review the diff and commit tests/snapshots/"


# tool schema snapshots ------------------------------------------------------------------------------


def tool_contract(tool: Any) -> dict[str, Any]:
    return tool.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"name"})


async def published_contracts() -> dict[str, dict[str, Any]]:
    """What tools/list returns with every toolset on (the opt-in store and store_sync too), in its order, without a database: the
    server is built exactly as `crm-mcp serve` builds it, and building only stores the pool.
    Settings are constructed without reading CRM_* from the environment."""
    crm = Crm(settings=Settings.model_construct(toolsets="all,store,store_sync", read_only=False), pool=None)  # type: ignore[arg-type]
    tools = await build_server(crm).list_tools()
    return {t.name: tool_contract(t) for t in tools}


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_snapshots(contracts: dict[str, dict[str, Any]], root: Path) -> None:
    tools_dir = root / "tools"
    tools_dir.mkdir(parents=True, exist_ok=True)
    for stale in tools_dir.glob("*.json"):
        if stale.stem not in contracts:
            stale.unlink()
    for name, contract in contracts.items():
        (tools_dir / f"{name}.json").write_text(_dump(contract))
    (root / "tool_order.json").write_text(_dump(list(contracts)))


def snapshot_problems(contracts: dict[str, dict[str, Any]], root: Path) -> list[str]:
    """Every difference between the published tools and the snapshot files, one line each."""
    problems: list[str] = []
    tools_dir = root / "tools"
    stored = {p.stem: p for p in tools_dir.glob("*.json")} if tools_dir.is_dir() else {}
    for name, contract in contracts.items():
        if name not in stored:
            problems.append(f"{name}: no snapshot {tools_dir / (name + '.json')}")
        elif json.loads(stored[name].read_text()) != contract:
            problems.append(f"{name}: its contract differs from {stored[name]}")
    for name in sorted(set(stored) - set(contracts)):
        problems.append(f"{name}: snapshot {stored[name]} names a tool the server no longer publishes")
    order_file = root / "tool_order.json"
    if not order_file.exists():
        problems.append(f"no tools/list order snapshot {order_file}")
    elif json.loads(order_file.read_text()) != list(contracts):
        problems.append(f"the tools/list order differs from {order_file}")
    return problems


async def test_every_tool_matches_its_snapshot() -> None:
    contracts = await published_contracts()
    if os.environ.get(UPDATE) == "1":
        write_snapshots(contracts, SNAPSHOTS)
    problems = snapshot_problems(contracts, SNAPSHOTS)
    assert not problems, "tool contracts changed:\n  " + "\n  ".join(problems) + f"\n{HOW_TO_UPDATE}"


async def test_snapshot_check_fails_on_a_missing_extra_or_changed_file(tmp_path: Path) -> None:
    contracts = await published_contracts()
    write_snapshots(contracts, tmp_path)
    assert snapshot_problems(contracts, tmp_path) == []

    missing = next(iter(contracts))
    (tmp_path / "tools" / f"{missing}.json").unlink()
    assert snapshot_problems(contracts, tmp_path) == [f"{missing}: no snapshot {tmp_path / 'tools' / (missing + '.json')}"]

    write_snapshots(contracts, tmp_path)
    shutil.copy(tmp_path / "tools" / f"{missing}.json", tmp_path / "tools" / "retired_tool.json")
    assert [p.split(":")[0] for p in snapshot_problems(contracts, tmp_path)] == ["retired_tool"]

    write_snapshots(contracts, tmp_path)
    changed = dict(contracts)
    last = list(changed)[-1]
    changed[last] = {**changed[last], "description": changed[last]["description"] + " Changed."}
    assert [p.split(":")[0] for p in snapshot_problems(changed, tmp_path)] == [last]

    reordered = dict(reversed(list(contracts.items())))
    assert snapshot_problems(reordered, tmp_path) == [f"the tools/list order differs from {tmp_path / 'tool_order.json'}"]

    shutil.rmtree(tmp_path / "tools")
    assert len(snapshot_problems(contracts, tmp_path)) == len(contracts)


async def test_stdio_server_publishes_the_in_process_contracts(db_dsn: str) -> None:
    """The snapshots are built in-process; this proves that is what a client over stdio gets."""
    async with mcp_client(db_dsn, CRM_TOOLSETS="all,store,store_sync") as client:
        over_stdio = {t.name: tool_contract(t) for t in (await client.list_tools()).tools}
    in_process = await published_contracts()
    assert list(over_stdio) == list(in_process)
    assert over_stdio == in_process


# README generated blocks ----------------------------------------------------------------------------


def _readme_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_script", REPO / "scripts" / "readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_generated_blocks_are_current() -> None:
    proc = subprocess.run([sys.executable, "scripts/readme.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_check_detects_drift_and_write_repairs_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    current = (REPO / "README.md").read_text()
    readme.write_text(current.replace("| `find_customer` |", "| `find_customer_renamed` |", 1))
    run = [sys.executable, str(REPO / "scripts" / "readme.py"), "--readme", str(readme)]
    check = subprocess.run([*run, "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "generated:tools" in check.stderr and "--write" in check.stderr
    assert subprocess.run([*run, "--write"], capture_output=True, text=True).returncode == 0
    assert readme.read_text() == current
    assert subprocess.run([*run, "--check"], capture_output=True, text=True).returncode == 0


def test_readme_state_machine_is_the_transitions_table() -> None:
    from crm_mcp.tools.tickets import TRANSITIONS

    block = _readme_script().state_machine_block()
    rows = dict(re.match(r"(\w+)\s+-> (.*)", line).groups() for line in block.splitlines() if "->" in line)  # type: ignore[union-attr]
    assert set(rows) == set(TRANSITIONS) == set(v.TICKET_STATUSES)
    for status, moves in TRANSITIONS.items():
        assert rows[status] == (" | ".join(moves) or "(final)")


def test_missing_readme_markers_are_one_clear_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "readme.py"), "--readme", str(readme), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "<!-- generated:tools -->" in proc.stderr and "Traceback" not in proc.stderr


# vocabulary vs database CHECK constraints ------------------------------------------------------------

# (table, column) -> the vocabulary it stores. Every single-column IN-list CHECK in the schema must be
# here or in NOT_MIRRORED, so a new one forces a decision.
MIRRORED: dict[tuple[str, str], tuple[str, ...]] = {
    ("customers", "plan"): get_args(v.Plan),
    ("customer_identifiers", "kind"): get_args(v.IdentifierKind),
    ("customer_identifiers", "source_channel"): get_args(v.Channel),
    ("customer_sentiment", "channel"): get_args(v.Channel),
    ("conversations", "initial_channel"): get_args(v.Channel),
    ("conversations", "current_channel"): get_args(v.Channel),
    ("conversations", "status"): get_args(v.ConversationStatus),
    ("tickets", "category"): get_args(v.TicketCategory),
    ("tickets", "priority"): get_args(v.TicketPriority),
    ("tickets", "status"): get_args(v.TicketStatus),
    ("tickets", "source_channel"): get_args(v.Channel),
    ("messages", "channel"): get_args(v.Channel),
    ("messages", "direction"): get_args(v.Direction),
    ("messages", "role"): get_args(v.MessageRole),
    ("messages", "delivery_status"): get_args(v.DeliveryStatus),
    ("channel_configs", "channel"): get_args(v.Channel),
    ("channel_configs", "tone"): get_args(v.Tone),
    ("agent_metrics", "channel"): get_args(v.Channel),
    ("knowledge_base", "category"): get_args(v.KbCategory),
    ("feedback", "channel"): get_args(v.Channel),
    ("analytics_daily", "channel"): ("all", *get_args(v.Channel)),  # 'all' is the per-day total row
    ("analytics_ticket_cells", "channel"): get_args(v.Channel),
    ("agent_turns", "decision"): get_args(v.AgentDecision),
    ("api_tokens", "role"): ROLES,  # server/roles.py: the access policy's roles
}
# Vocabularies only the database and the SQL next to them use; no Python Literal mirrors them.
NOT_MIRRORED = {
    ("conversations", "resolution_type"), ("ticket_events", "kind"), ("messages", "content_type"),
    ("agent_metrics", "metric_type"), ("orders", "status"), ("agent_actions", "action_type"),
    ("agent_actions", "approval_status"), ("agent_actions", "result"), ("customer_preferences", "learned_from"),
    ("analytics_ticket_cells", "kind"),  # tools/ticket_cohorts.py
}
ENUM_CHECKS_SQL = """
SELECT c.relname AS table_name, a.attname AS column_name, pg_get_constraintdef(k.oid) AS definition
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
WHERE k.contype = 'c' AND cardinality(k.conkey) = 1 AND pg_get_constraintdef(k.oid) LIKE '%= ANY (ARRAY[%'
ORDER BY 1, 2
"""


def check_values(definition: str) -> tuple[str, ...]:
    """The values of `col = ANY (ARRAY['a'::text, ...])`, PostgreSQL's rendering of `col IN ('a', ...)`."""
    array = re.search(r"= ANY \(ARRAY\[(.*?)\]\)", definition)
    assert array, definition
    return tuple(m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'::text", array.group(1)))


def test_check_values_parses_postgres_rendering() -> None:
    d = "CHECK (((source_channel IS NULL) OR (source_channel = ANY (ARRAY['email'::text, 'it''s'::text]))))"
    assert check_values(d) == ("email", "it's")


async def test_vocabulary_equals_database_checks(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(ENUM_CHECKS_SQL)
    finally:
        await conn.close()
    in_db: dict[tuple[str, str], tuple[str, ...]] = {}
    for r in rows:
        key = (r["table_name"], r["column_name"])
        assert key not in in_db, f"{key} has two enumerated CHECKs"
        in_db[key] = check_values(r["definition"])
    unknown = set(in_db) - set(MIRRORED) - NOT_MIRRORED
    assert not unknown, f"enumerated CHECKs neither mirrored in tools/vocabulary.py nor listed as NOT_MIRRORED: {sorted(unknown)}"
    gone = (set(MIRRORED) | NOT_MIRRORED) - set(in_db)
    assert not gone, f"no enumerated CHECK on {sorted(gone)} any more"
    drift = {f"{t}.{c}": {"database": in_db[(t, c)], "python": vals}
             for (t, c), vals in MIRRORED.items() if sorted(in_db[(t, c)]) != sorted(vals)}
    assert not drift, f"tools/vocabulary.py and the CHECK constraints differ: {drift}"
