"""Outputs sized for a context window (issue 10): tools/list at most half of what it was before
(bench/context_size_baseline.json, measured by bench/context_size.py on commit ddc7ae7), and a
result's text content without nulls and without floats of more than 4 decimals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.types import ListToolsResult

from crm_mcp.server.app import build_server
from crm_mcp.server.config import Settings
from crm_mcp.tools.plumbing.context import Crm

from .conftest import REPO, call, mcp_client

pytestmark = pytest.mark.anyio
BASELINE = REPO / "bench" / "context_size_baseline.json"


async def test_tools_list_is_at_most_half_the_baseline() -> None:
    baseline = json.loads(BASELINE.read_text())
    before = baseline["items"]["tools/list result"]["bytes"]
    crm = Crm(settings=Settings.model_construct(toolsets="all", read_only=False), pool=None)  # type: ignore[arg-type]
    # The same tool set as the baseline: tools added since then are new weight, not a regression
    # of these (the baseline was measured with every toolset on).
    tools = [t for t in await build_server(crm).list_tools() if t.name in baseline["tools"]]
    assert len(tools) == len(baseline["tools"]), "a tool of the baseline disappeared"
    now = len(ListToolsResult(tools=tools).model_dump_json(by_alias=True, exclude_none=True).encode())
    assert now <= before / 2, (
        f"tools/list is {now:,} bytes, {now / before:.0%} of the {before:,} before commit "
        f"{baseline['commit'][:7]}; the target is at most 50% ({before // 2:,})")


def _nulls_and_long_floats(text: str) -> tuple[list[str], list[str], int]:
    """(paths holding null, float literals with more than 4 decimals, number of float literals)."""
    floats: list[str] = []
    doc = json.loads(text, parse_float=lambda s: floats.append(s) or float(s))
    nulls: list[str] = []

    def walk(v: Any, path: str) -> None:
        if v is None:
            nulls.append(path or "$")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(doc, "")
    long = [f for f in floats if "e" in f.lower() or len(f.partition(".")[2]) > 4]
    return nulls, long, len(floats)


async def test_result_text_has_no_nulls_and_short_floats(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        found = await call(client, "ingest_message", channel="email", channel_message_id="ctx-1",
                           sender={"email": "ana@example.com"}, subject="Locked out",
                           content="I am really annoyed: the reset link never arrives and I cannot log in.")
        customer_id = found["customer"]["customer_id"]
        result = await client.call_tool("get_customer_history", {"customer_id": customer_id, "response_format": "detailed"})
    assert not result.is_error
    # structuredContent keeps every field, nulls included (no name, no subject on events without
    # one): a text rendering that kept them fails below. The message's sentiment is a float4
    # (-0.439 reads back as -0.4390000104904175), so a text that did not round fails too.
    assert _nulls_and_long_floats(json.dumps(result.structured_content))[0], "expected null fields in structuredContent"
    text = "".join(getattr(c, "text", "") for c in result.content)
    nulls, long_floats, n_floats = _nulls_and_long_floats(text)
    assert n_floats, f"expected the message sentiment as a float in the text: {text}"
    assert not nulls, f"null fields in the text content: {nulls}"
    assert not long_floats, f"floats with more than 4 decimals in the text content: {long_floats}"
    assert "\n" not in text, "the text content is indented JSON; expected compact"
