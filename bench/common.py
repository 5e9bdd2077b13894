"""Shared pieces of the crm-mcp benchmarks (not tests).

Embedded PostgreSQL in a temp dir, migrated scratch databases, the server as a stdio or HTTP
subprocess, percentiles, per-process CPU accounting, machine description, table and JSON output.
Every figure is reported next to a floor measured in the same run: the machine is small
(2 cores) and shared, so absolute numbers drift between runs while ratios hold better.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# Server env for every benchmark: quiet logs; the SLA sweep moved out of the measured window.
SERVER_ENV = {"CRM_LOG_LEVEL": "WARNING", "CRM_DEFAULT_REGION": "US", "CRM_SLA_CHECK_INTERVAL_S": "3600"}


# --- database -------------------------------------------------------------------------------


def with_db(dsn: str, dbname: str) -> str:
    p = urlsplit(dsn)
    return urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


@dataclass
class Postgres:
    admin_dsn: str
    pgdata: Path | None  # None: external server (CRM_BENCH_DATABASE_URL)


@contextmanager
def embedded_postgres() -> Iterator[Postgres]:
    """CRM_BENCH_DATABASE_URL if set, else the embedded server in a temp dir (stopped after)."""
    if url := os.environ.get("CRM_BENCH_DATABASE_URL"):
        yield Postgres(url, None)
        return
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import embedded_pgdata, start_embedded, stop_embedded

    tmp = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    settings = load_settings(data_dir=tmp)
    dsn = start_embedded(settings)
    try:
        yield Postgres(dsn, embedded_pgdata(settings))
    finally:
        stop_embedded(embedded_pgdata(settings))
        shutil.rmtree(tmp, ignore_errors=True)


async def create_db(admin_dsn: str, name: str | None = None, template: str | None = None) -> str:
    """A new database: a migrated one, or a copy of `template`. Returns its DSN."""
    name = name or f"crm_b_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    finally:
        await admin.close()
    dsn = with_db(admin_dsn, name)
    if template is None:
        from crm_mcp.server.migrate import migrate

        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return dsn


async def drop_db(admin_dsn: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def bench_settings(dsn: str, **kw: Any) -> Any:
    from crm_mcp.server.config import load_settings

    return load_settings(database_url=dsn, log_level="WARNING", default_region="US", sla_check_interval_s=3600, **kw)


@asynccontextmanager
async def open_direct(dsn: str) -> AsyncIterator[Any]:
    """The server's own Crm (pool + settings) inside this process, for the in-process floors."""
    from crm_mcp.server.app import open_crm

    async with open_crm(bench_settings(dsn), check_embeddings=False, background=False) as crm:
        yield crm


async def seed_customers(dsn: str, n: int) -> list[str]:
    """n customers the way production makes them: one ingest_message each (customer, email
    identity, conversation, ticket, message, sentiment). Returns their emails."""
    from crm_mcp.tools.intake import IngestInput, ingest_message

    emails = [f"seed{i:05d}@example.com" for i in range(n)]
    async with open_direct(dsn) as crm:
        for i, e in enumerate(emails):
            await ingest_message(crm, IngestInput(
                channel="email", channel_message_id=f"seed-{i}", sender={"email": e, "name": f"Seed Customer {i}"},
                subject="Login trouble", content=SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]))
    return emails


SAMPLE_TEXTS = [
    "Hi, I can't log in to my account since this morning. Could you help me reset my password?",
    "Thanks for the quick answer yesterday, the export works now. One more question about invoices.",
    "Your app keeps crashing when I open the reports page. This is really frustrating.",
    "How do I add a second user to our workspace on the starter plan?",
    "I was charged twice this month. Please refund the duplicate payment.",
]


# --- the server as a subprocess -------------------------------------------------------------


def server_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(SERVER_ENV)
    env["CRM_DATABASE_URL"] = dsn
    env.update(extra)
    return env


def stdio_params(dsn: str, *args: str, **env: str) -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable, args=["-m", "crm_mcp.server.cli", "serve", *args], env=server_env(dsn, **env), cwd=str(REPO))


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@asynccontextmanager
async def stdio_client(dsn: str, mode: str = "auto") -> AsyncIterator[tuple[Any, int]]:
    """(mcp.Client over stdio, server pid). The pid is the new child of this process."""
    from mcp import Client

    before = set(children(os.getpid()))
    async with Client(stdio_params(dsn), mode=mode, read_timeout_seconds=60) as client:  # type: ignore[arg-type]
        new = [p for p in children(os.getpid()) if p not in before]
        yield client, (new[0] if new else 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def http_server(dsn: str, port: int | None = None) -> Iterator[tuple[str, int]]:
    """`crm-mcp serve --http` on a free loopback port; yields (url, pid)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--no-auth", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(dsn), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"HTTP server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("HTTP server did not start within 60 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@contextmanager
def bridge_process(dsn: str, url: str, kind: str, *, name: str, port: int | None = None, stop_s: float = 15,
                   **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`crm-mcp bridge <kind> --server URL` on a loopback port (a free one unless given), once its
    /healthz answers; yields (process, base URL). `name` says which bridge did not start; env is
    added to the server's."""
    import httpx

    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "bridge", kind, "--port", str(port), "--server", url],
        env=server_env(dsn, **env), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} bridge did not start")
            time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(stop_s)


# --- CPU accounting: who burns the time (client / server / postgres) ------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of one process (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_pids(pg: Postgres) -> list[int]:
    if pg.pgdata is None:
        return []
    try:
        master = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *children(master)]


@dataclass
class CpuMeter:
    """CPU seconds spent by this process, the server process and PostgreSQL during a block."""
    pg: Postgres
    server_pid: int = 0
    start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def _snap(self) -> dict[str, float]:
        pg_pids = postgres_pids(self.pg)
        return {
            "bench_client": time.process_time(),
            "server": proc_cpu(self.server_pid) if self.server_pid else 0.0,
            # backends that exited are gone from the sum; the pool keeps ours alive for the block
            "postgres": sum(proc_cpu(p) for p in pg_pids),
        }

    def __enter__(self) -> CpuMeter:
        self.start = self._snap()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._snap()
        self.used = {k: round(end[k] - self.start[k], 3) for k in end}

    def per_op_ms(self, n: int) -> dict[str, float]:
        return {k: round(v * 1000 / n, 3) for k, v in self.used.items()}


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), numpy's default method; nan when empty."""
    if not len(values):
        return float("nan")
    return float(np.percentile(values, q))


def summarize(latencies_s: Sequence[float], elapsed_s: float, n: int | None = None) -> dict[str, float]:
    """p50/p95/p99/mean in ms and operations per second (n ops over elapsed wall time)."""
    xs = sorted(latencies_s)
    n = n if n is not None else len(xs)
    ms = lambda v: round(v * 1000, 3)  # noqa: E731
    return {
        "n": n,
        "p50_ms": ms(percentile(xs, 50)),
        "p95_ms": ms(percentile(xs, 95)),
        "p99_ms": ms(percentile(xs, 99)),
        "mean_ms": ms(sum(xs) / len(xs)) if xs else float("nan"),
        "max_ms": ms(xs[-1]) if xs else float("nan"),
        "ops_per_s": round(n / elapsed_s, 1) if elapsed_s > 0 else float("nan"),
    }


async def timed_loop(fn: Any, n: int, warmup: int = 0) -> dict[str, float]:
    """Run `await fn(i)` sequentially n times (after `warmup` unmeasured calls)."""
    for i in range(warmup):
        await fn(-1 - i)
    lat = []
    pc = time.perf_counter
    t0 = pc()
    for i in range(n):
        s = pc()
        await fn(i)
        lat.append(pc() - s)
    return summarize(lat, pc() - t0)


async def spread(fn: Any, n: int, workers: int) -> dict[str, float]:
    """n calls of `await fn(worker, i)` over `workers` loops; only what fn reports as timed is counted."""
    lat: list[float] = []
    per = [n // workers + (1 if w < n % workers else 0) for w in range(workers)]

    async def loop(w: int) -> None:
        for i in range(per[w]):
            lat.append(await fn(w, i))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(workers):
            tg.start_soon(loop, w)
    return summarize(lat, time.perf_counter() - t0)


# --- machine, table, JSON ------------------------------------------------------------------


def machine(pg_version: str | None = None) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("mcp", "asyncpg", "pydantic", "pydantic-core", "uvicorn", "anyio", "vaderSentiment"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version,
        "packages": versions,
    }


async def pg_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@dataclass
class Row:
    """One line of the summary table. kind='latency': lower is better, x_floor = value/floor.
    kind='rate': higher is better, x_floor = floor/value. Either way x_floor >= 1 means 'N times
    the cost of the floor'. target_op is '<=' or '>='."""
    figure: str
    value: float
    unit: str
    floor: float | None
    floor_name: str
    kind: str  # latency | rate
    target: float | None = None
    target_op: str = "<="

    @property
    def x_floor(self) -> float | None:
        if self.floor is None or not self.floor or not self.value:
            return None
        return self.value / self.floor if self.kind == "latency" else self.floor / self.value

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.target_op == "<=" else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "value": self.value, "unit": self.unit, "floor": self.floor,
                "floor_name": self.floor_name, "x_floor": None if self.x_floor is None else round(self.x_floor, 2),
                "target": None if self.target is None else f"{self.target_op} {self.target:g}", "met": self.met}


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    s = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{s} {unit}".strip()


def print_table(rows: list[Row], title: str | None = None) -> None:
    head = ("figure", "value", "floor", "x floor", "target", "met?")
    cells = [(r.figure, _fmt(r.value, r.unit), f"{_fmt(r.floor, r.unit)} ({r.floor_name})" if r.floor else "-",
              "-" if r.x_floor is None else f"{r.x_floor:.1f}x",
              "-" if r.target is None else f"{r.target_op} {_fmt(r.target, r.unit)}",
              {True: "yes", False: "NO", None: "-"}[r.met]) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)))
    sys.stdout.flush()


def write_json(data: dict[str, Any], path: Path | None = None) -> Path:
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
