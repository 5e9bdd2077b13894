"""Hostile input against every tool of one real server over stdio (raw JSON-RPC, see hostile_corpus).

Contract for every call: either a clean tool error (isError, no traceback or raw driver/SQL text,
not the SDK's bare crash message) or a structured result that validates against the tool's
outputSchema. The server must stay up, and nothing invalid may be stored.

Hypothesis drives a valid baseline call per tool with 1-3 fields replaced by hostile values (so the
hostile value gets past the other fields and into the handler); fixed corpora cover the rest
(10 MB bodies, lone surrogates, invalid UTF-8, NaN, deep nesting, forged cursors, malformed ids,
wrong types, protocol junk)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_mcp.server.registration import selected_specs

from . import hostile_corpus as hc
from .conftest import REPO, TEMPLATE_DB, _with_db, server_env

TOOL_NAMES = [s.name for s in selected_specs("all", read_only=False)]  # what the default server publishes
MAX_EXAMPLES = 60
TEN_MB = 10 * 1024 * 1024


@dataclass
class Ctx:
    srv: hc.RawServer
    dsn: str
    tools: dict[str, dict[str, Any]]
    ids: dict[str, str]
    stderr: Path
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "tool_error": 0, "rpc_error": 0})
    log_checked: int = 0  # bytes of the server's stderr already searched for crashes


def _db(coro_fn, *args):
    return anyio.run(coro_fn, *args)


async def _create_db(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await conn.close()


async def _drop_db(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def _ok(ctx: Ctx, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    res = ctx.srv.call_tool(tool, args)
    assert "result" in res and not res["result"].get("isError"), (tool, res)
    return res["result"]["structuredContent"]


@pytest.fixture(scope="module")
def ctx(pg_admin_dsn: str, template_dsn: str) -> Any:
    name = f"crm_h_{uuid.uuid4().hex[:12]}"
    _db(_create_db, pg_admin_dsn, name)
    dsn = _with_db(pg_admin_dsn, name)
    tmp = Path(tempfile.mkdtemp(prefix="crm-hostile-"))
    srv = hc.launch(server_env(dsn, CRM_LOG_LEVEL="INFO"), REPO, tmp / "server.stderr")
    try:
        srv.initialize()
        tools = {t["name"]: t for t in srv.request("tools/list", {})["result"]["tools"]}
        c = Ctx(srv=srv, dsn=dsn, tools=tools, ids={}, stderr=tmp / "server.stderr")
        a = _ok(c, "ingest_message", {"channel": "email", "channel_message_id": "seed-1", "subject": "Seed",
                                      "sender": {"email": "seed@example.com", "name": "Seed Person"},
                                      "content": "How do I export responses to CSV?"})
        b = _ok(c, "ingest_message", {"channel": "whatsapp", "channel_message_id": "seed-2",
                                      "sender": {"whatsapp": "+12025550142", "name": "Other"}, "content": "Is there an API?"})
        sent = _ok(c, "send_response", {"ticket_number": a["ticket"]["ticket_number"], "body": "Use Export > CSV."})
        kb = _ok(c, "upsert_kb_article", {"title": "Exporting to CSV", "content": "Open the form, choose Export, then CSV.",
                                          "category": "general", "slug": "seed/export"})
        c.ids = {
            "customer_id": a["customer"]["customer_id"], "other_customer_id": b["customer"]["customer_id"],
            "conversation_id": a["conversation"]["conversation_id"], "ticket_number": a["ticket"]["ticket_number"],
            "other_ticket": b["ticket"]["ticket_number"], "inbound_id": a["message_id"],
            "outbound_id": sent["parts"][0]["message_id"], "article_id": kb.get("article_id") or kb.get("article", {}).get("article_id", ""),
        }
        yield c
    finally:
        code = srv.close()
        log = (tmp / "server.stderr").read_text(errors="replace") if (tmp / "server.stderr").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        _db(_drop_db, pg_admin_dsn, name)
    # the server must have shut down cleanly when its stdin closed
    assert code == 0, f"server exit code {code}\n{log[-3000:]}"


# checking one response ------------------------------------------------------------------------------


def check(ctx: Ctx, tool: str, args: Any, res: dict[str, Any]) -> str:
    """Assert the contract; return 'ok', 'tool_error' or 'rpc_error'."""
    assert ctx.srv.alive(), f"server died on {tool} {args!r:.300}"
    if "error" in res:  # a JSON-RPC error (e.g. arguments that are not an object): clean text only
        msg = json.dumps(res["error"])
        assert not any(m in msg for m in hc.LEAK_MARKERS), f"{tool}: leak in protocol error: {msg[:500]}"
        ctx.outcomes["rpc_error"] += 1
        return "rpc_error"
    result = res["result"]
    text = " ".join(c.get("text", "") for c in result.get("content", []))
    if result.get("isError"):
        leaked = [m for m in hc.LEAK_MARKERS if m in text]
        assert not leaked, f"{tool}: error text leaks {leaked}: {text[:800]}\nargs={args!r:.500}"
        assert text.strip() != f"Error executing tool {tool}", (
            f"{tool}: unhandled exception in the server (SDK crash message); see server stderr. args={args!r:.500}")
        assert text.strip(), f"{tool}: empty error text"
        ctx.outcomes["tool_error"] += 1
        return "tool_error"
    sc = result.get("structuredContent")
    assert isinstance(sc, dict), f"{tool}: success without structured content: {result!r:.500}"
    schema = ctx.tools[tool].get("outputSchema")
    if schema:
        jsonschema.validate(sc, schema)
    ctx.outcomes["ok"] += 1
    return "ok"


def call_and_check(ctx: Ctx, tool: str, args: Any, timeout: float = 30, problems: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """problems given: collect contract violations (one run reports all of them) instead of failing at the first."""
    res = ctx.srv.call_tool(tool, args, timeout=timeout)
    try:
        return check(ctx, tool, args, res), res
    except AssertionError as exc:
        if problems is None or not ctx.srv.alive():
            raise
        problems.append(str(exc).split("\nassert ")[0][:600])
        return "violation", res


def _text(res: dict[str, Any]) -> str:
    if "error" in res:
        return json.dumps(res["error"])
    return " ".join(c.get("text", "") for c in res["result"].get("content", []))


# hypothesis: valid baseline with hostile fields -----------------------------------------------------


def baseline(tool: str, ids: dict[str, str], u: str) -> dict[str, Any]:
    t, c = ids["ticket_number"], ids["customer_id"]
    return {
        "find_customer": {"query": "seed@example.com"},
        "upsert_customer": {"email": f"h-{u[:8]}@example.com", "name": "Hostile Test"},
        "merge_customers": {"primary_id": c, "duplicate_id": ids["other_customer_id"], "reason": "same person"},
        "get_customer_history": {"customer_id": c},
        "ingest_message": {"channel": "email", "channel_message_id": f"h-{u}", "sender": {"email": "seed@example.com"},
                           "content": "Another question about exports"},
        "send_response": {"ticket_number": t, "body": "Thanks, looking into it.", "idempotency_key": u},
        "update_delivery_status": {"message_id": ids["outbound_id"], "status": "delivered"},
        "get_conversation": {"conversation_id": ids["conversation_id"]},
        "claim_outbox": {"channel": "whatsapp", "limit": 1, "lease_s": 5},
        "claim_inbound": {"lease_s": 5},
        "get_ticket_updates": {"ticket_number": t, "conversation_id": ids["conversation_id"]},
        "create_ticket": {"customer_id": c, "subject": "Billing question", "channel": "email"},
        "get_ticket": {"ticket_number": t},
        "list_tickets": {"limit": 5},
        "update_ticket": {"ticket_number": t, "note": "checked"},
        "escalate_to_human": {"ticket_number": ids["other_ticket"], "reason": "needs a human"},
        "search_knowledge_base": {"query": "export csv"},
        "upsert_kb_article": {"title": "Hostile article", "content": "Body text.", "slug": f"hostile/{u[:8]}"},
        "get_metrics": {"window": "24h"},
        "record_feedback": {"ticket_number": t, "rating": 4},
        "search_products": {"query": "form builder"},
        "bridge_checkpoint": {"bridge": "hostile:test", "key": "imap:INBOX"},
        "record_agent_turn": {"message_id": ids["inbound_id"], "attempt": 1, "decision": "answered", "model": "offline",
                              "latency_ms": 5},
    }[tool]


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(st.characters(exclude_categories=("Cs",)), max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=4)), max_leaves=12)
hostile_text = st.one_of(
    st.sampled_from(hc.STRINGS),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
    st.text(st.characters(codec="ascii"), max_size=30),  # control characters included
    st.builds(lambda a, b: a + b, st.sampled_from(hc.SQLI + hc.CONTROL), st.sampled_from(hc.MARKUP + hc.UNICODE)),
)


def hostile_for(name: str, prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = [hostile_text, st.sampled_from(hc.WRONG_TYPES), st.sampled_from(hc.NUMBERS), json_value]
    if "cursor" in name:
        options.append(st.sampled_from(hc.CURSORS))
    if name.endswith("_id") or name in ("ticket_number", "query", "primary_id", "duplicate_id"):
        options.append(st.sampled_from(hc.IDS))
    if name in ("since", "until", "received_at"):
        options.append(st.sampled_from(hc.DATES))
    if name in ("metadata", "sender"):
        options.append(st.dictionaries(hostile_text, json_value, max_size=5))
        options.append(st.integers(1, 12).map(lambda d: hc.nested(d)))
    enum = prop.get("enum") or next((o.get("enum") for o in prop.get("anyOf", []) if o.get("enum")), None)
    if enum:
        options.append(st.sampled_from(enum))
    return st.one_of(*options)


@pytest.mark.parametrize("tool", TOOL_NAMES)
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hypothesis_hostile_fields(ctx: Ctx, tool: str, data: st.DataObject) -> None:
    props: dict[str, Any] = ctx.tools[tool]["inputSchema"].get("properties", {})
    args = baseline(tool, ctx.ids, data.draw(st.uuids(), label="u").hex)
    names = sorted(props) + ["unexpected_field"]
    for fname in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="fields"):
        if fname in args and data.draw(st.integers(0, 9), label=f"drop {fname} if 0") == 0:
            del args[fname]  # a missing required field now and then
        else:
            args[fname] = data.draw(hostile_for(fname, props.get(fname, {})), label=fname)
    call_and_check(ctx, tool, args)


# fixed corpora ---------------------------------------------------------------------------------------


def _types(prop: dict[str, Any]) -> set[Any]:
    """Every JSON type a property admits: `type` may be a name or a list (["string", "null"])."""
    out: set[Any] = set()
    for t in [prop.get("type")] + [o.get("type") for o in prop.get("anyOf", [])]:
        out |= set(t) if isinstance(t, list) else {t}
    return out


def _string_props(schema: dict[str, Any]) -> list[str]:
    out = []
    for name, prop in schema.get("properties", {}).items():
        types = _types(prop)
        if "string" in types and not prop.get("enum") and not any(o.get("enum") for o in prop.get("anyOf", [])):
            out.append(name)
    return out


def _max_length(prop: dict[str, Any]) -> int | None:
    return prop.get("maxLength") or next((o["maxLength"] for o in prop.get("anyOf", []) if "maxLength" in o), None)


def test_tools_list_is_the_catalog(ctx: Ctx) -> None:
    assert sorted(ctx.tools) == sorted(TOOL_NAMES)


def test_10mb_bodies_are_refused_cleanly(ctx: Ctx) -> None:
    """10 MB into each tool's main string field and every object field; 300 KB (over every limit,
    the largest being 200 000 characters) into the other string fields."""
    big, large = "x" * TEN_MB, "y" * 300_000
    refused: list[str] = []
    for tool in TOOL_NAMES:
        schema = ctx.tools[tool]["inputSchema"]
        strings = _string_props(schema)
        main = next((f for f in strings if f in schema.get("required", [])), strings[0] if strings else None)
        objects = [n for n, p in schema.get("properties", {}).items()
                   if "object" in _types(p)]
        for fname in strings + objects:
            value = big if fname == main or fname in objects else large
            args = baseline(tool, ctx.ids, uuid.uuid4().hex)
            if fname == "sender":
                args[fname] = {"email": "seed@example.com", "name": value}
            elif fname in objects:
                args[fname] = {"blob": value}
            else:
                args[fname] = value
            kind, res = call_and_check(ctx, tool, args, timeout=60, problems=refused)
            text = _text(res)
            if kind == "ok":
                refused.append(f"{tool}.{fname} accepted a {len(value) // 1000} KB value")
            elif kind == "violation":
                continue
            elif _max_length(schema["properties"][fname]) and not re.search(
                    r"at most|too long|larger than|characters|KB|size|limit", text, re.IGNORECASE):
                refused.append(f"{tool}.{fname}: error does not say what is too big: {text[:200]}")
    assert not refused, refused
    assert call_and_check(ctx, "find_customer", {"query": "seed@example.com"})[0] == "ok"


def test_lone_surrogates_invalid_utf8_nan_and_deep_nesting_do_not_break_the_server(ctx: Ctx) -> None:
    srv = ctx.srv
    # Lone surrogates are legal JSON escapes but not Unicode; the SDK's parser refuses the line.
    # Acceptable: a clean error, or (SDK behaviour) no answer at all - but the server must live on.
    dropped = []
    junk_params = [
        ('find_customer', '{"name":"find_customer","arguments":{"query":"\\ud800"}}'),
        ('find_customer', '{"name":"find_customer","arguments":{"query":"a\\udfffb@example.com"}}'),
        ('ingest_message', '{"name":"ingest_message","arguments":{"channel":"email","channel_message_id":"\\ud800",'
                           '"sender":{"email":"seed@example.com","name":"\\udc00"},"content":"hi \\ud800 there"}}'),
        ('list_tickets', '{"name":"list_tickets","arguments":{"limit":NaN}}'),
        ('get_metrics', '{"name":"get_metrics","arguments":{"since":Infinity}}'),
        ('upsert_customer', '{"name":"upsert_customer","arguments":{"email":"n@example.com","metadata":' + hc.nested_json(100_000) + '}}'),
        ('find_customer', '{"name":"find_customer","arguments":{"query":' + '[' * 50_000 + ']' * 50_000 + '}}'),
    ]
    sent = [(tool, params, srv.send_request("tools/call", params)) for tool, params in junk_params]
    # a valid call behind them is answered: the reader survived every one of those lines
    res = srv.request_raw("tools/call", '{"name":"find_customer","arguments":{"query":"seed@example.com"}}')
    assert check(ctx, "find_customer", "after junk", res) == "ok"
    deadline = time.monotonic() + 1.5
    for tool, params, rid in sent:
        try:
            res = srv.wait_for(rid, timeout=max(0.05, deadline - time.monotonic()))
        except hc.NoResponse:
            dropped.append(params[:60])
            continue
        check(ctx, tool, params[:100], res)
    assert srv.alive()
    # valid surrogate pairs and invalid UTF-8 bytes (decoded with replacement) are ordinary text
    res = srv.request_raw("tools/call", '{"name":"find_customer","arguments":{"query":"\\ud83d\\ude00 emoji"}}')
    assert check(ctx, "find_customer", "pair", res) == "ok"
    for raw in (b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80abc"):
        res = srv.request_raw("tools/call", b'{"name":"find_customer","arguments":{"query":"x' + raw + b'y"}}')
        check(ctx, "find_customer", raw, res)
        res = srv.request_raw("tools/call", b'{"name":"ingest_message","arguments":{"channel":"email","channel_message_id":"utf8-'
                              + raw.hex().encode() + b'","sender":{"email":"seed@example.com"},"content":"bad ' + raw + b' bytes"}}')
        check(ctx, "ingest_message", raw, res)
    # nesting inside the limits of the JSON parser but past ours
    for depth in (7, 20, 150):
        for tool, args in (("ingest_message", {**baseline("ingest_message", ctx.ids, uuid.uuid4().hex), "metadata": hc.nested(depth)}),
                           ("upsert_customer", {**baseline("upsert_customer", ctx.ids, uuid.uuid4().hex), "metadata": hc.nested(depth)}),
                           ("find_customer", {"query": hc.nested(depth, kind="list")})):
            kind, res = call_and_check(ctx, tool, args)
            if tool == "ingest_message":
                assert kind == "tool_error" and "nested" in _text(res)
    assert call_and_check(ctx, "find_customer", {"query": "seed@example.com"})[0] == "ok"
    if dropped:
        print(f"SDK dropped {len(dropped)} unparseable request(s) without answering: {dropped}")


def test_limits_cursors_ids_and_wrong_types(ctx: Ctx) -> None:
    problems: list[str] = []
    for tool in TOOL_NAMES:
        props = ctx.tools[tool]["inputSchema"].get("properties", {})
        for fname in props:
            values: list[Any] = list(hc.WRONG_TYPES_CORE)
            if fname in ("limit", "rating", "max_price", "min_score"):
                values += hc.NUMBERS
            if "cursor" in fname:
                values += hc.CURSORS
            if fname.endswith("_id") or fname in ("ticket_number",):
                values += hc.IDS + hc.SQLI[:6]
            if fname in ("since", "until", "received_at"):
                values += hc.DATES
            for v in values:
                args = baseline(tool, ctx.ids, uuid.uuid4().hex)
                args[fname] = v
                call_and_check(ctx, tool, args, problems=problems)
    # cursors are also checked in combination with otherwise valid calls of each paginated tool
    for tool, args in (("list_tickets", {}), ("get_customer_history", {"customer_id": ctx.ids["customer_id"]}),
                       ("get_conversation", {"conversation_id": ctx.ids["conversation_id"]})):
        for cur in hc.CURSORS:
            kind, res = call_and_check(ctx, tool, {**args, "cursor": cur}, problems=problems)
            if kind == "tool_error" and not ("cursor" in _text(res) or "Invalid arguments" in _text(res)):
                problems.append(f"{tool}: forged cursor error does not mention the cursor: {_text(res)[:200]}")
    assert not problems, "\n".join(problems)


def test_string_corpus_in_every_string_field(ctx: Ctx) -> None:
    """Each tool's main (first required) string field gets the whole corpus; every other string
    field the control-character cases (what must never be stored) plus a rotating few."""
    problems: list[str] = []
    corpus = hc.SQLI[:10] + hc.MARKUP[:6] + hc.CONTROL_CORE + hc.CONTROL[-6:] + hc.UNICODE[:6]
    turn = 0
    for tool in TOOL_NAMES:
        schema = ctx.tools[tool]["inputSchema"]
        fields = _string_props(schema)
        required = [f for f in fields if f in schema.get("required", [])]
        for fname in fields:
            if required and fname == required[0]:
                values = corpus
            else:
                values = hc.CONTROL_CORE + [corpus[(turn + k) % len(corpus)] for k in range(3)]
                turn += 3
            for v in values:
                args = baseline(tool, ctx.ids, uuid.uuid4().hex)
                args[fname] = v
                call_and_check(ctx, tool, args, problems=problems)
    assert not problems, "\n".join(problems)


CTL = "\x1b[31m!\x07\x08\x7f"


async def _control_hits(dsn: str) -> dict[str, list[str]]:
    """table.column -> stored values containing control characters."""
    out: dict[str, list[str]] = {}
    conn = await asyncpg.connect(dsn)
    try:
        cols = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying') ORDER BY 1, 2")
        for r in cols:
            rows = await conn.fetch(f'SELECT DISTINCT "{r["column_name"]}" AS v FROM "{r["table_name"]}" WHERE "{r["column_name"]}" ~ $1',
                                    CONTROL_RE)
            if rows:
                out[f"{r['table_name']}.{r['column_name']}"] = [x["v"] for x in rows]
    finally:
        await conn.close()
    return out


def test_free_text_fields_never_store_control_characters(ctx: Ctx) -> None:
    """Every writing tool, every free-text field, a value with ESC/BEL/BS/DEL: it must be refused
    or stored without them (as ingest_message does for content). Each value names its own field."""
    u = uuid.uuid4().hex[:8]

    def v(field: str) -> str:
        return f"{field}{CTL}"

    msg = _ok(ctx, "ingest_message", {"channel": "email", "channel_message_id": v("ingest_message.channel_message_id"),
                                      "sender": {"email": f"ctl-{u}@example.com", "name": v("ingest_message.sender.name")},
                                      "content": v("ingest_message.content"), "subject": v("ingest_message.subject"),
                                      "thread_ref": v("ingest_message.thread_ref")})
    number, cid = msg["ticket"]["ticket_number"], msg["customer"]["customer_id"]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("upsert_customer", {"email": f"ctl-a-{u}@example.com", "name": v("upsert_customer.name"), "company": v("upsert_customer.company")}),
        ("send_response", {"ticket_number": number, "body": v("send_response.body"), "idempotency_key": v("send_response.idempotency_key")}),
        ("create_ticket", {"customer_id": cid, "channel": "email", "subject": v("create_ticket.subject"), "note": v("create_ticket.note"),
                           "assigned_to": v("create_ticket.assigned_to")}),
        ("update_ticket", {"ticket_number": number, "note": v("update_ticket.note"), "assigned_to": v("update_ticket.assigned_to"),
                           "actor": v("update_ticket.actor"), "resolution_notes": v("update_ticket.resolution_notes")}),
        ("escalate_to_human", {"ticket_number": number, "reason": v("escalate_to_human.reason")}),
        ("upsert_kb_article", {"title": v("upsert_kb_article.title"), "content": v("upsert_kb_article.content"), "slug": f"ctl/{u}"}),
        ("record_feedback", {"ticket_number": number, "rating": 2, "comment": v("record_feedback.comment")}),
    ]
    for tool, args in cases:
        call_and_check(ctx, tool, args)
    sent = _ok(ctx, "send_response", {"ticket_number": number, "body": "plain reply"})
    call_and_check(ctx, "update_delivery_status", {"message_id": sent["parts"][0]["message_id"], "status": "failed",
                                                   "channel_message_id": v("update_delivery_status.channel_message_id"),
                                                   "error": v("update_delivery_status.error")})
    a = _ok(ctx, "upsert_customer", {"email": f"ctl-p-{u}@example.com", "name": "P"})["customer"]["customer_id"]
    b = _ok(ctx, "upsert_customer", {"email": f"ctl-d-{u}@example.com", "name": "D"})["customer"]["customer_id"]
    call_and_check(ctx, "merge_customers", {"primary_id": a, "duplicate_id": b, "reason": v("merge_customers.reason"),
                                            "merged_by": v("merge_customers.merged_by")})
    hits = _db(_control_hits, ctx.dsn)
    stored = sorted({f"{val.split(CTL)[0]} -> {col}" for col, vals in hits.items() for val in vals
                     if CTL in val and re.fullmatch(r"[a-z_]+\.[a-z_.]+", val.split(CTL)[0])})
    assert not stored, "control characters stored:\n" + "\n".join(stored)


def test_protocol_junk(ctx: Ctx) -> None:
    srv = ctx.srv
    for arguments in ([], "string", None, 5, [{"query": "x"}]):
        res = srv.call_tool("find_customer", arguments, timeout=10)
        check(ctx, "find_customer", arguments, res)
        assert "error" in res or res["result"].get("isError")
    res = srv.call_tool("no_such_tool'; DROP TABLE customers; --", {})
    assert "error" in res or res["result"].get("isError")
    check(ctx, "find_customer", "unknown tool", res)
    for line in (b"", b"not json", b"{", b'{"jsonrpc":"2.0"}', b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}', b"[]", b"\x00\x01"):
        srv.send_line(line)
    assert call_and_check(ctx, "find_customer", {"query": "seed@example.com"})[0] == "ok"


# after the barrage ----------------------------------------------------------------------------------

CONTROL_RE = "[\u0001-\u0008\u000b\u000c\u000e-\u001f\u007f]"


async def _invariants(dsn: str) -> list[str]:
    problems: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        cols = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying') ORDER BY 1, 2")
        for r in cols:
            n = await conn.fetchval(f'SELECT count(*) FROM "{r["table_name"]}" WHERE "{r["column_name"]}" ~ $1', CONTROL_RE)
            if n:
                problems.append(f"{r['table_name']}.{r['column_name']}: {n} row(s) with control characters")
        tickets = await conn.fetchval("SELECT count(*) FROM tickets")
        counter = await conn.fetchval("SELECT value FROM counters WHERE name = 'ticket'")
        top = await conn.fetchval("SELECT max(substr(ticket_number, 5)::int) FROM tickets")
        if not (counter == tickets == top):
            problems.append(f"ticket counter {counter}, tickets {tickets}, highest number {top}")
        bad = await conn.fetch(
            """SELECT c.id, c.total_interactions, count(m.id) AS inbound FROM customers c
               LEFT JOIN messages m ON m.customer_id = c.id AND m.direction = 'inbound'
               WHERE c.merged_into IS NULL GROUP BY c.id HAVING c.total_interactions <> count(m.id)""")
        if bad:
            problems.append(f"{len(bad)} customer(s) whose total_interactions differs from their inbound messages")
        multi = await conn.fetchval(
            "SELECT count(*) FROM (SELECT conversation_id FROM tickets WHERE status NOT IN ('resolved', 'closed') "
            "AND conversation_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) x")
        if multi:
            problems.append(f"{multi} conversation(s) with more than one unfinished ticket")
        dup = await conn.fetchval("SELECT count(*) FROM (SELECT channel, channel_message_id FROM messages "
                                  "WHERE channel_message_id IS NOT NULL AND direction = 'inbound' GROUP BY 1, 2 HAVING count(*) > 1) x")
        if dup:
            problems.append(f"{dup} duplicated inbound channel messages")
        big = await conn.fetchval("SELECT max(pg_column_size(metadata)) FROM customers")
        if big and big > 64 * 1024:
            problems.append(f"customers.metadata holds a {big // 1024} KB value")
    finally:
        await conn.close()
    return problems


def assert_server_answers_and_data_is_sane(ctx: Ctx) -> None:
    assert ctx.srv.alive()
    found = _ok(ctx, "find_customer", {"query": "seed@example.com"})
    assert found["matches"] and found["matches"][0]["customer_id"] in (ctx.ids["customer_id"], ctx.ids["other_customer_id"])
    print("outcomes:", ctx.outcomes)
    problems = _db(_invariants, ctx.dsn)
    assert not problems, "\n".join(problems)
    with ctx.stderr.open("rb") as f:  # only what the server logged since the last check
        f.seek(ctx.log_checked)
        log = f.read().decode(errors="replace")
        ctx.log_checked = f.tell()
    crashes = re.findall(r"^.*(?:Traceback|ERROR).*$", log, re.MULTILINE)
    assert not crashes, crashes[:20]


@pytest.fixture(autouse=True)
def _after_each_barrage(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that drives the shared server is followed by the sanity check, so the check
    covers every barrage whatever order (or subset) the tests run in; a failure here is reported
    against the test whose barrage broke something."""
    yield
    if "ctx" in request.fixturenames:
        assert_server_answers_and_data_is_sane(request.getfixturevalue("ctx"))
