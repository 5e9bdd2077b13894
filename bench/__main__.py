"""Run every crm-mcp benchmark in sequence and write one JSON file.

    python -m bench [--skip-kb] [--skip-embed] [--profile] [--json bench/results/latest.json]

1. tool_overhead: find_customer over stdio vs. the cheapest tools/call, the raw SQL and the
   in-process handler (bench/tool_overhead.py).
2. intake: ingest_message over stdio and HTTP x10 vs. the handler in-process (bench/intake.py).
3. embed_speed (bench/embed_speed.py) and kb_latency (bench/kb_latency.py, when present), each
   in its own process; their output is kept in the JSON (kb_latency's own JSON is merged).
4. context_size: tools/list and seven typical results in bytes and tokens, now against the
   baseline recorded from commit ddc7ae7 (bench/context_size.py, bench/context_size_baseline.json).
5. agent: one and two offline `crm-mcp agent` processes, answered per second and ingest-to-reply,
   against the bare ingest -> claim_inbound -> search_knowledge_base -> send_response calls
   (bench/agent.py, its own process, about 2 minutes).
6. whatsapp: signed Twilio and Meta webhooks per second through `crm-mcp bridge whatsapp` vs.
   the bare ingest_message floor (bench/whatsapp.py, in its own process; its JSON is merged).
7. email: mails per second from IMAP APPEND to stored through `crm-mcp bridge email` (bench/email.py;
   needs Dovecot, skipped with a note when it is not installed).
8. --profile: bench/profile_stdio.py (needs py-spy).

Every figure is printed next to a floor measured in the same run (the machine is shared and
noisy); the summary table is also in the JSON under "rows".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import context_size, intake, tool_overhead  # noqa: E402
from bench.common import (  # noqa: E402
    REPO, RESULTS, Row, create_db, drop_db, embedded_postgres, log, machine, print_table, seed_customers, write_json,
)


async def pg_info(dsn: str) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        out = {"version": str(await conn.fetchval("SHOW server_version"))}
        for s in ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"):
            out[s] = str(await conn.fetchval(f"SHOW {s}"))
        out["pgvector"] = str(await conn.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"))
        return out
    finally:
        await conn.close()


async def core(args: argparse.Namespace, report: dict[str, Any]) -> list[Any]:
    rows: list[Any] = []
    with embedded_postgres() as pg:
        info = await pg_info(pg.admin_dsn)
        report["machine"] = machine(info["version"])
        report["machine"]["postgresql_settings"] = info
        base = await create_db(pg.admin_dsn, name="crm_bench_base")
        try:
            log(f"seeding {args.customers} customers (one ingest_message each)")
            emails = await seed_customers(base, args.customers)
            if not args.skip_overhead:
                dsn = await create_db(pg.admin_dsn, template="crm_bench_base")
                try:
                    res = await tool_overhead.run(pg, dsn, emails, args.calls)
                finally:
                    await drop_db(pg.admin_dsn, dsn)
                r = res.pop("_rows")
                print_table(r, "1. tool-call overhead (stdio, find_customer by email)")
                print(f"   statements per find_customer: {res['statements_per_call']} ({'; '.join(res['statements'])})")
                rows += r
                report["tool_overhead"] = res
            if not args.skip_intake:
                dsn = await create_db(pg.admin_dsn, template="crm_bench_base")
                try:
                    res = await intake.run(pg, dsn, emails, args.messages, args.clients)
                finally:
                    await drop_db(pg.admin_dsn, dsn)
                r = res.pop("_rows")
                print_table(r, f"2. intake (ingest_message; {args.messages} msgs per figure)")
                print(f"   statements per ingest: new {res['statements_new']}, returning {res['statements_returning']}")
                rows += r
                report["intake"] = res
        finally:
            await drop_db(pg.admin_dsn, base)
        if not args.skip_context:
            now = await context_size.run(pg)
            baseline = context_size.load_baseline()
            compared = context_size.compare(now, baseline)
            context_size.print_comparison(compared, baseline)
            rows += context_size.summary_rows(compared, baseline)
            report["context_size"] = {**now, "baseline_commit": (baseline or {}).get("commit"), "rows": compared}
    return rows


def issue17_rows(report: dict[str, Any]) -> list[Row]:
    """The four figures of issue 17, each beside the floor measured in this run. The machine is
    shared: compare the ratios, and the load averages printed below."""
    it, ov = report.get("intake"), report.get("tool_overhead")
    rows: list[Row] = []
    if it:
        x = f"x{it['clients']}"
        rt = it["sql_select1"]["p50_ms"]
        for kind in ("new", "returning"):
            rows.append(Row(f"ingest_message HTTP {x}, {kind}", it[f"http_{x}_{kind}"]["ops_per_s"], "/s",
                            it[f"direct_{x}_{kind}"]["ops_per_s"], f"in-process {x}", "rate", 1000, ">="))
        rows.append(Row("ingest_message stdio seq, new", it["stdio_seq_new"]["ops_per_s"], "/s",
                        it["direct_seq_new"]["ops_per_s"], "in-process seq", "rate", 700, ">="))
        if ov:
            rows.append(Row("ingest_message stdio seq, new", it["stdio_seq_new"]["ops_per_s"], "/s",
                            ov["stdio_floor_invalid_args"]["ops_per_s"], "SDK floor calls/s", "rate", 700, ">="))
        for label, key in (("seq", "direct_seq_new"), (x, f"direct_{x}_new")):
            rows.append(Row(f"ingest_message in-process {label}, new", it[key]["ops_per_s"], "/s",
                            round(1000 / (it["statements_new"] * rt), 1), f"{it['statements_new']} x SELECT 1",
                            "rate", 5000, ">="))
    if ov:
        f, fl = ov["stdio_find_customer"], ov["stdio_floor_invalid_args"]
        rows.append(Row("find_customer stdio p50", f["p50_ms"], "ms", fl["p50_ms"], "SDK round trip p50", "latency",
                        round(1.5 * fl["p50_ms"], 3)))
    return rows


def run_module(module: str, extra: list[str], timeout: int) -> dict[str, Any]:
    log(f"running python -m {module} {' '.join(extra)}")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", module, *extra], cwd=str(REPO), capture_output=True, text=True,
                           timeout=timeout)
        out = {"returncode": p.returncode, "stdout": p.stdout, "stderr_tail": p.stderr[-3000:]}
    except subprocess.TimeoutExpired as exc:
        out = {"returncode": None, "error": f"timed out after {timeout} s",
               "stdout": (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n== {module} ({out['wall_s']} s, exit {out['returncode']})")
    print(out.get("stdout", "").rstrip() or out.get("stderr_tail", ""))
    return out


def run_module_json(module: str, extra: list[str], timeout: int) -> dict[str, Any]:
    """run_module for a bench that writes its figures to --json: they are merged under "results"."""
    with tempfile.TemporaryDirectory() as tmp:
        jpath = Path(tmp) / "results.json"
        res = run_module(module, ["--json", str(jpath), *extra], timeout=timeout)
        if jpath.exists():
            res["results"] = json.loads(jpath.read_text())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="find_customer calls per figure")
    p.add_argument("--messages", type=int, default=1000, help="ingest_message calls per figure")
    p.add_argument("--clients", type=int, default=10, help="concurrent HTTP clients")
    p.add_argument("--customers", type=int, default=1000, help="seeded customers")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-intake", action="store_true")
    p.add_argument("--skip-context", action="store_true", help="skip bench.context_size")
    p.add_argument("--skip-embed", action="store_true", help="skip bench.embed_speed")
    p.add_argument("--skip-kb", action="store_true", help="skip bench.kb_latency")
    p.add_argument("--kb-args", default="--sizes 10000",
                   help="arguments for bench.kb_latency (default '--sizes 10000'; its own default 10k+100k took ~24 min here)")
    p.add_argument("--skip-agent", action="store_true", help="skip bench.agent")
    p.add_argument("--skip-whatsapp", action="store_true", help="skip bench.whatsapp")
    p.add_argument("--whatsapp-args", default="--webhooks 200", help="arguments for bench.whatsapp (default '--webhooks 200')")
    p.add_argument("--skip-email", action="store_true", help="skip bench.email")
    p.add_argument("--email-mails", type=int, default=300, help="mails APPENDed by bench.email")
    p.add_argument("--profile", action="store_true", help="also run bench.profile_stdio (needs py-spy)")
    p.add_argument("--json", default=str(RESULTS / "latest.json"))
    args = p.parse_args()

    t0 = time.perf_counter()
    report: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args)}
    rows = anyio.run(core, args, report)

    if not args.skip_embed:
        report["embed_speed"] = run_module("bench.embed_speed", [], timeout=900)
    kb = REPO / "bench" / "kb_latency.py"
    if not args.skip_kb and kb.exists():
        report["kb_latency"] = run_module_json("bench.kb_latency", args.kb_args.split(), timeout=3600)
    elif not kb.exists():
        report["kb_latency"] = {"skipped": "bench/kb_latency.py not present"}
    if not args.skip_agent:
        report["agent"] = run_module("bench.agent", [], timeout=600)
    if not args.skip_whatsapp:
        report["whatsapp"] = run_module_json("bench.whatsapp", args.whatsapp_args.split(), timeout=1800)
    if not args.skip_email:
        import shutil

        if shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists():
            report["email"] = run_module("bench.email", ["--mails", str(args.email_mails)], timeout=1800)
        else:
            report["email"] = {"skipped": "dovecot is not installed (apt-get install dovecot-imapd)"}
    if args.profile:
        report["profile"] = run_module("bench.profile_stdio", [], timeout=900)

    if rows:
        issue = issue17_rows(report)
        if issue:
            print_table(issue, "issue 17 (throughput): figure, measured, floor in this run, ratio, target")
            report["issue17_rows"] = [r.as_dict() for r in issue]
        print_table(rows, "summary (x floor = value/floor for latencies, floor/value for rates: the cost in floors)")
    m = report.get("machine", {})
    print(f"\nmachine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), Python {m.get('python')}, "
          f"PostgreSQL {m.get('postgresql')} (embedded; fsync={m.get('postgresql_settings', {}).get('fsync')}, "
          f"synchronous_commit={m.get('postgresql_settings', {}).get('synchronous_commit')}), "
          f"mcp {m.get('packages', {}).get('mcp')}, load at start {m.get('loadavg_at_start')}, at end {os.getloadavg()}")
    report["loadavg_at_end"] = os.getloadavg()
    report["rows"] = [r.as_dict() for r in rows]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_json(report, Path(args.json))
    print(f"wrote {path} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
