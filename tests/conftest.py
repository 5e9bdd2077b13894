"""Test fixtures: a real PostgreSQL and the real server as a subprocess, driven with mcp.Client.

Database, in this order: CRM_TEST_DATABASE_URL if set; a testcontainers pgvector/pgvector:pg17
container if CRM_TEST_DOCKER=1; else the embedded server in a temporary directory (stopped at
the end of the session). Each test gets its own database cloned from a migrated template."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "crm_test_template"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _with_db(dsn: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if url := os.environ.get("CRM_TEST_DATABASE_URL"):
        yield url
        return
    if os.environ.get("CRM_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("pgvector/pgvector:pg17", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import embedded_pgdata, start_embedded, stop_embedded

    tmp = Path(tempfile.mkdtemp(prefix="crm-test-"))
    settings = load_settings(data_dir=tmp)
    dsn = start_embedded(settings)
    try:
        yield dsn
    finally:
        stop_embedded(embedded_pgdata(settings))
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> str:
    """A migrated database that every test database is cloned from (CREATE DATABASE ... TEMPLATE)."""
    import anyio

    async def build() -> None:
        from crm_mcp.server.migrate import migrate

        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_db(pg_admin_dsn, TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    anyio.run(build)
    return _with_db(pg_admin_dsn, TEMPLATE_DB)


@asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str, template: str | None = None) -> AsyncIterator[str]:
    """A database that exists for the duration of the block, optionally cloned from a template."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    finally:
        await admin.close()
    try:
        yield _with_db(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def db_dsn(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with scratch_database(pg_admin_dsn, "crm_t", TEMPLATE_DB) as dsn:
        yield dsn


@pytest.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    async with scratch_database(pg_admin_dsn, "crm_e") as dsn:
        yield dsn


def server_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({"CRM_DATABASE_URL": dsn, "CRM_LOG_LEVEL": "WARNING", "CRM_DEFAULT_REGION": "US"})
    env.update(extra)
    return env


def stdio_params(dsn: str, *args: str, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "crm_mcp.server.cli", "serve", *args],
        env=server_env(dsn, **env),
        cwd=str(REPO),
    )


@asynccontextmanager
async def mcp_client(dsn: str, *args: str, mode: str = "auto", **env: str) -> AsyncIterator[Client]:
    async with Client(stdio_params(dsn, *args, **env), mode=mode, read_timeout_seconds=60) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture(params=["auto", "legacy"], ids=["era-2026-07-28", "era-2025-11-25"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def client(db_dsn: str) -> AsyncIterator[Client]:
    async with mcp_client(db_dsn) as c:
        yield c


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None, f"{tool} returned no structured content"
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail with a tool error; return the error text."""
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    return text
