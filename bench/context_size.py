"""What the server costs a model's context window: `tools/list` and typical tool results, in bytes
and tokens (issue 10: "bring them down by at least half without losing what a model needs").

    python -m bench.context_size [--json PATH]
    python -m bench.context_size --server-python /tmp/oldvenv/bin/python --server-cwd /tmp/oldtree \\
        --write-baseline --commit ddc7ae7      # re-record bench/context_size_baseline.json

The real server runs over stdio (`crm-mcp serve --demo`, every toolset) on a scratch database that
the server itself migrates, driven with the SDK's `mcp.Client`. Measured:

- `tools/list`: the JSON-RPC response message, the result's compact JSON, and its parts summed over
  the tools (descriptions, input schemas, output schemas) to show what dominates;
- seven typical calls (find_customer, get_customer_history concise, get_ticket, list_tickets,
  search_knowledge_base, get_metrics, ingest_message): the text content, the structuredContent
  (compact JSON) and the whole JSON-RPC response message, each separately.

"Message" sizes are the response as the server sent it: the client's parsed message serialized
again with the call the SDK's stdio server writes it with (`model_dump_json(by_alias=True,
exclude_unset=True)`), which reproduces the line on the wire.

Tokens: there is no network here (no tiktoken download), so the counter is the BERT WordPiece
tokenizer the project ships for its embeddings (tools/engines/data/all-MiniLM-L6-v2.tokenizer.json,
via `tokenizers`, no special tokens, no truncation). It is a proxy for an LLM's tokenizer (it
lower-cases and splits every punctuation mark, so JSON counts high); bytes/4 is printed as a
second estimate.

The floor is the same measurement on the code before this issue's work (commit ddc7ae7), recorded
once in bench/context_size_baseline.json: that old server needs its own venv, so it is not
re-measured on every run. Ratios are now / before (lower is better)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS, Row, create_db, drop_db, embedded_postgres, log, server_env, write_json  # noqa: E402

BASELINE = REPO / "bench" / "context_size_baseline.json"
TOKENIZER = REPO / "tools" / "engines" / "data" / "all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_NAME = "BERT WordPiece (all-MiniLM-L6-v2 tokenizer.json, shipped in tools/engines/data; a proxy for LLM tokens)"

# The demo customer with the most history (two conversations, seven messages, an escalated ticket).
DEMO_EMAIL = "maya.lindqvist@nordvik.example"
KB_QUERY = "How do I reset my password?"

CALLS = ("find_customer", "get_customer_history", "get_ticket", "list_tickets", "search_knowledge_base",
         "get_metrics", "ingest_message")


# --- counting -------------------------------------------------------------------------------


@cache
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_truncation()  # the embedder's file truncates at 128 and pads; a count must not
    tok.no_padding()
    return tok


def size(text: str) -> dict[str, int]:
    n = len(text.encode("utf-8"))
    return {"bytes": n, "tokens": len(_tokenizer().encode(text, add_special_tokens=False).ids), "bytes_div_4": round(n / 4)}


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- a transport that keeps the server's response messages -----------------------------------


class _Recording:
    """The read stream of the stdio transport, passed through, keeping each JSON-RPC response."""

    def __init__(self, inner: Any, responses: list[str]) -> None:
        self.inner, self.responses = inner, responses

    def _keep(self, item: Any) -> Any:
        from mcp import types

        msg = getattr(item, "message", None)
        msg = getattr(msg, "root", msg)
        if isinstance(msg, types.JSONRPCResponse):
            self.responses.append(msg.model_dump_json(by_alias=True, exclude_unset=True))
        return item

    async def receive(self) -> Any:
        return self._keep(await self.inner.receive())

    def __aiter__(self) -> _Recording:
        return self

    async def __anext__(self) -> Any:
        return self._keep(await self.inner.__anext__())

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> _Recording:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self.inner.__aexit__(*exc)


@asynccontextmanager
async def recording_client(params: Any) -> AsyncIterator[tuple[Any, list[str]]]:
    from mcp import Client
    from mcp.client.stdio import stdio_client

    responses: list[str] = []

    @asynccontextmanager
    async def transport() -> AsyncIterator[Any]:
        async with stdio_client(params) as (read, write):
            yield _Recording(read, responses), write

    async with Client(transport(), read_timeout_seconds=300) as client:  # type: ignore[arg-type]
        yield client, responses


# --- the measurement --------------------------------------------------------------------------


def _first(value: Any, key: str) -> Any:
    """The first value under `key` anywhere in a JSON document (depth first)."""
    if isinstance(value, dict):
        if value.get(key) is not None:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            if (found := _first(v, key)) is not None:
                return found
    return None


async def measure(params: Any) -> dict[str, Any]:
    """Every figure for one server (given as StdioServerParameters). The database must be empty or
    migrated by that server's own code: the server migrates and loads the demo on start."""
    items: dict[str, dict[str, int]] = {}
    async with recording_client(params) as (client, responses):
        listed = await client.list_tools()
        if listed.next_cursor:
            raise RuntimeError("tools/list is paginated; this benchmark reads one page only")
        items["tools/list message"] = size(responses[-1])
        items["tools/list result"] = size(listed.model_dump_json(by_alias=True, exclude_none=True))
        if BASELINE.exists():  # the same tools as the baseline: later tools are new weight, not growth
            before = set(json.loads(BASELINE.read_text()).get("tools", {}))
            same = listed.model_copy(update={"tools": [t for t in listed.tools if t.name in before]})
            items["tools/list result, baseline's tools"] = size(same.model_dump_json(by_alias=True, exclude_none=True))
        per_tool: dict[str, dict[str, int]] = {}
        for t in listed.tools:
            per_tool[t.name] = {
                "description": len((t.description or "").encode()),
                "input_schema": len(compact(t.input_schema).encode()),
                "output_schema": len(compact(t.output_schema).encode()) if t.output_schema else 0,
            }
        for part in ("description", "input_schema", "output_schema"):
            text = "".join(
                (t.description or "") if part == "description"
                else compact(t.input_schema if part == "input_schema" else t.output_schema or {})
                for t in listed.tools)
            items[f"tools/list: {part}s"] = size(text)

        async def call(name: str, label: str, **arguments: Any) -> dict[str, Any]:
            result = await client.call_tool(name, arguments)
            text = "".join(getattr(c, "text", "") for c in result.content)
            if result.is_error:
                raise RuntimeError(f"{name}({arguments}) failed: {text}")
            items[f"{label} text"] = size(text)
            items[f"{label} structured"] = size(compact(result.structured_content))
            items[f"{label} message"] = size(responses[-1])
            return result.structured_content or {}

        found = await call("find_customer", "find_customer", query=DEMO_EMAIL)
        customer_id = _first(found.get("matches"), "customer_id") or _first(found.get("matches"), "id")
        await call("get_customer_history", "get_customer_history", customer_id=customer_id, response_format="concise")
        tickets = await call("list_tickets", "list_tickets")
        mine = [t for t in tickets.get("tickets", []) if t.get("customer_id") == customer_id] or tickets.get("tickets", [])
        await call("get_ticket", "get_ticket", ticket_number=mine[0]["ticket_number"])
        await call("search_knowledge_base", "search_knowledge_base", query=KB_QUERY)
        await call("get_metrics", "get_metrics")
        await call("ingest_message", "ingest_message", channel="email", channel_message_id="context-size-1",
                   sender={"email": DEMO_EMAIL, "name": "Maya Lindqvist"}, subject="Still locked out",
                   content="Hi again, the reset link from yesterday expired and I still cannot log in. "
                           "This is getting really frustrating, we have a client demo tomorrow.")
    return {"tokenizer": TOKENIZER_NAME, "items": items, "tools": per_tool}


def server_params(dsn: str, python: str, cwd: Path) -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(command=python, args=["-m", "crm_mcp.server.cli", "serve", "--demo"],
                                 env=server_env(dsn, CRM_TOOLSETS="all"), cwd=str(cwd))


async def run(pg: Any, python: str = sys.executable, cwd: Path = REPO) -> dict[str, Any]:
    # An empty database (a copy of template1, which create_db does not migrate): the server under
    # test applies its own migrations, so an older commit gets its own schema.
    dsn = await create_db(pg.admin_dsn, template="template1")
    try:
        log(f"context size: serving the demo from {cwd} with {python}")
        return await measure(server_params(dsn, python, cwd))
    finally:
        await drop_db(pg.admin_dsn, dsn)


# --- comparison with the baseline --------------------------------------------------------------


def load_baseline() -> dict[str, Any] | None:
    return json.loads(BASELINE.read_text()) if BASELINE.exists() else None


def _ratio(now: int | None, before: int | None) -> float | None:
    return round(now / before, 3) if now is not None and before else None


def compare(now: dict[str, Any], baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    before = (baseline or {}).get("items", {})
    out = []
    for name, m in now["items"].items():
        # "tools/list result, baseline's tools" compares with the whole list measured before
        b = before.get(name) or before.get(name.split(",")[0], {})
        out.append({"item": name, "bytes_before": b.get("bytes"), "bytes_now": m["bytes"],
                    "bytes_ratio": _ratio(m["bytes"], b.get("bytes")), "tokens_before": b.get("tokens"),
                    "tokens_now": m["tokens"], "tokens_ratio": _ratio(m["tokens"], b.get("tokens")),
                    "bytes_div_4_now": m["bytes_div_4"]})
    return out


def print_comparison(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> None:
    head = ("item", "bytes before", "bytes now", "ratio", "tokens before", "tokens now", "ratio", "bytes/4 now")
    keys = ("item", "bytes_before", "bytes_now", "bytes_ratio", "tokens_before", "tokens_now", "tokens_ratio",
            "bytes_div_4_now")
    fmt = lambda v: "-" if v is None else f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v  # noqa: E731
    cells = [[fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    ref = f"before = commit {baseline['commit'][:7]} ({baseline['commit_date']})" if baseline else "no baseline file"
    print(f"\ncontext size ({ref}; ratio = now / before; tokens: {TOKENIZER_NAME})")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
    sys.stdout.flush()


def summary_rows(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> list[Row]:
    """The headline figures for `python -m bench`'s summary: tools/list and each call's text content,
    against the recorded floor; the issue's target is at most half of it."""
    floor_name = f"before, {baseline['commit'][:7]}" if baseline else "no baseline"
    out = []
    for r in rows:
        if r["item"] in ("tools/list message", *(f"{c} text" for c in CALLS)):
            target = r["bytes_before"] / 2 if r["bytes_before"] else None
            out.append(Row(f"context: {r['item']}", r["bytes_now"], "B", r["bytes_before"], floor_name, "latency", target))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-python", default=sys.executable, help="python of the server under test (its venv)")
    p.add_argument("--server-cwd", default=str(REPO), help="source tree of the server under test")
    p.add_argument("--write-baseline", action="store_true", help=f"write the measurement to {BASELINE.relative_to(REPO)}")
    p.add_argument("--commit", help="with --write-baseline: the commit the server under test was built from")
    p.add_argument("--json", default=str(RESULTS / "context_size.json"))
    args = p.parse_args()

    async def go() -> dict[str, Any]:
        with embedded_postgres() as pg:
            return await run(pg, args.server_python, Path(args.server_cwd))

    now = anyio.run(go)
    if args.write_baseline:
        if not args.commit:
            p.error("--write-baseline needs --commit (the commit the measured server was built from)")
        full, date = subprocess.run(["git", "show", "-s", "--format=%H %cI", args.commit], cwd=args.server_cwd,
                                    capture_output=True, text=True, check=True).stdout.split()
        BASELINE.write_text(json.dumps({"commit": full, "commit_date": date,
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "how": "python -m bench.context_size --server-python <venv of that commit>/bin/python "
                                               "--server-cwd <worktree of that commit> --write-baseline --commit <commit>",
                                        **now}, indent=2) + "\n")
        print(f"wrote {BASELINE}")
    baseline = load_baseline()
    rows = compare(now, baseline)
    print_comparison(rows, baseline)
    path = write_json({"context_size": {**now, "baseline_commit": (baseline or {}).get("commit"), "rows": rows}},
                      Path(args.json))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
