"""Where the time goes in find_customer and ingest_message over stdio (sampling profile).

    python -m bench.profile_stdio [--calls 1500] [--out bench/results/profile]

Needs py-spy (`pip install py-spy`). The stdio server and this (client) process are sampled
at the same time with `py-spy record --format raw` (idle threads excluded, so only CPU work
counts), while a fixed loop of calls runs. Each sample is attributed to the innermost frame
that belongs to a known component (asyncpg, pydantic, the MCP SDK, json, VADER, ...), and the
heaviest inclusive frames of our code and the SDK are listed. Raw collapsed stacks are kept
in --out for flame graphs. No server code is changed: py-spy attaches by pid.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    RESULTS, create_db, drop_db, embedded_postgres, log, seed_customers, stdio_client, write_json,
)
from bench.intake import Messages  # noqa: E402

# innermost matching frame wins; order matters only for overlapping patterns
IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "WorkerThread.run", "Event.wait", "Thread._wait_for_tstate_lock")

# Where our packages live in this checkout (py-spy reports absolute paths), wherever it is cloned.
_REPO = Path(__file__).resolve().parent.parent
TOOLS, SERVER = str(_REPO / "tools"), str(_REPO / "server")

COMPONENTS = [
    ("asyncpg (driver, protocol)", ("/asyncpg/",)),
    ("pydantic validation/serialisation", ("/pydantic/", "/pydantic_core/", "pydantic_settings")),
    ("jsonschema", ("/jsonschema/", "/referencing/", "/rpds")),
    ("VADER sentiment", ("vaderSentiment",)),
    ("email_validator / phonenumbers / idna", ("/email_validator/", "/phonenumbers/", "/idna/")),
    ("json (stdlib)", ("/json/",)),
    ("crm_mcp tools (rules, classify)", (f"{TOOLS}/engines/rules",)),
    ("stdio pipe write (syscall)", ("asyncio/unix_events.py",)),
    ("socket write to PostgreSQL (syscall)", ("asyncio/selector_events.py",)),
    ("thread hand-off (anyio worker threads)", ("threading.py",)),
    ("crm_mcp tools (other)", (f"{TOOLS}/",)),
    ("crm_mcp server", (f"{SERVER}/",)),
    ("MCP SDK", ("/mcp/", "/mcp_types/")),
    ("anyio streams/threads", ("/anyio/",)),
    ("asyncio event loop", ("/asyncio/", "selectors.py")),
    ("logging", ("/logging/",)),
]


def component(stack: list[str]) -> str:
    if stack and stack[-1].startswith(IDLE_LEAVES):
        return "idle (waiting)"
    for frame in reversed(stack):  # leaf last in py-spy's collapsed format
        for name, pats in COMPONENTS:
            if any(p in frame for p in pats):
                return name
    return "other"


def parse(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    comps: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    selfc: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return comps, incl, selfc, 0
    for line in path.read_text().splitlines():
        stack_s, _, n_s = line.rpartition(" ")
        if not stack_s:
            continue
        n = int(n_s)
        stack = stack_s.split(";")
        if stack and stack[0].startswith(("process ", "thread ")):
            stack = [f for f in stack if not f.startswith(("process ", "thread "))]
        total += n
        comps[component(stack)] += n
        for f in set(stack):
            incl[_short(f)] += n
        if stack:
            selfc[_short(stack[-1])] += n
    return comps, incl, selfc, total


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (pkg/file.py)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    parts = loc.split("/")
    return f"{name} ({'/'.join(parts[-3:])})"


INTERESTING = (f"{TOOLS}/", f"{SERVER}/", "/mcp/", "pydantic", "asyncpg", "vader", "email_validator", "json/")


def report(label: str, path: Path, calls: int, wall: float) -> dict[str, Any]:
    comps, incl, selfc, total = parse(path)
    if not total:
        return {"label": label, "samples": 0}
    pct = lambda n: round(100 * n / total, 1)  # noqa: E731
    # frames of interest, heaviest inclusive first, skipping the near-100% outer frames
    busy = total - comps.get("idle (waiting)", 0)
    top = [(f, pct(n)) for f, n in incl.most_common(600)
           if any(k in f for k in ("tools/", "server/", "mcp/", "shared/", "pydantic", "asyncpg", "vader", "json/", "jsonschema"))
           and n < 0.9 * busy][:40]
    return {
        "label": label, "samples": total, "calls": calls, "wall_s": round(wall, 2),
        "components_pct": {k: pct(v) for k, v in comps.most_common()},
        "top_inclusive_pct": top,
        "top_self_pct": [(f, pct(n)) for f, n in selfc.most_common(15)],
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"\n== {r['label']}: {r.get('samples', 0)} samples over {r.get('calls')} calls in {r.get('wall_s')} s")
    if not r.get("samples"):
        return
    for k, v in r["components_pct"].items():
        print(f"  {v:5.1f}%  {k}")
    print("  heaviest inclusive frames:")
    for f, v in r["top_inclusive_pct"][:25]:
        print(f"    {v:5.1f}%  {f}")


class Spy:
    """py-spy record on some pids until stopped (SIGINT makes it write its output)."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--full-filenames", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            log(f"py-spy wrote nothing: {err.decode()[-500:]}")


async def run(dsn: str, emails: list[str], calls: int, outdir: Path, rate: int) -> dict[str, Any]:
    outdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    msgs = Messages(emails)
    results: dict[str, Any] = {}
    cases = {
        "find_customer": lambda: ("find_customer", {"query": rng.choice(emails)}),
        "ingest_new": lambda: ("ingest_message", msgs.make("new")),
        "ingest_returning": lambda: ("ingest_message", msgs.make("returning")),
    }
    async with stdio_client(dsn) as (client, spid):
        await client.list_tools()
        for name, make in cases.items():
            for _ in range(100):  # warm-up
                await client.call_tool(*make())
            log(f"profiling {name}: server pid {spid}, client pid {os.getpid()}")
            spies = {"server": Spy(spid, outdir / f"{name}.server.txt", rate),
                     "client": Spy(os.getpid(), outdir / f"{name}.client.txt", rate)}
            await anyio.sleep(0.5)  # let py-spy attach
            t0 = time.perf_counter()
            for _ in range(calls):
                r = await client.call_tool(*make())
                assert not r.is_error
            wall = time.perf_counter() - t0
            for s in spies.values():
                s.stop()
            for side, s in spies.items():
                rep = report(f"{name} / {side} process", s.out, calls, wall)
                results[f"{name}.{side}"] = rep
                print_report(rep)
    return results


async def main_async(args: argparse.Namespace) -> None:
    with embedded_postgres() as pg:
        dsn = await create_db(pg.admin_dsn)
        try:
            log(f"seeding {args.customers} customers")
            emails = await seed_customers(dsn, args.customers)
            res = await run(dsn, emails, args.calls, Path(args.out), args.rate)
            write_json(res, Path(args.out) / "profile.json")
            print(f"\nraw stacks and profile.json in {args.out}")
        finally:
            await drop_db(pg.admin_dsn, dsn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1500)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--out", default=str(RESULTS / "profile"))
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
