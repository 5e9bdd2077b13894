"""Apply migrations/NNNN_name.sql in order, once each, under an advisory lock.

Each file runs in its own transaction together with its row in schema_migrations, so a file is
either fully applied and recorded or not at all. The checksum catches an already-applied file
that was edited afterwards: that is an error, never silently ignored or re-run."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# Any constant unique to this application: pg_advisory_lock(bigint).
MIGRATION_LOCK_KEY = 0x63726D6D6370  # "crmmcp"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    if directory is None:
        files = [(p.name, p.read_text(encoding="utf-8")) for p in resources.files("crm_mcp.migrations").iterdir() if p.name.endswith(".sql")]
    else:
        files = [(p.name, p.read_text(encoding="utf-8")) for p in directory.glob("*.sql")]
    out: list[Migration] = []
    for fname, sql in files:
        m = _NAME.match(fname)
        if not m:
            raise MigrationError(f"migration file name {fname!r} does not match NNNN_name.sql")
        out.append(Migration(int(m.group(1)), m.group(2), sql))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return out


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations; return the ones this call applied."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[Migration] = []
    # Session-level lock: held across the per-file transactions, released in finally. A second
    # process blocks here, then finds everything recorded and applies nothing.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        for m in migrations:
            row = done.get(m.version)
            if row is not None:
                if row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name}.sql was edited after it was applied "
                        f"(checksum {m.checksum[:12]} != recorded {row['checksum'][:12]}); "
                        "add a new migration file instead of changing an applied one"
                    )
                continue
            log.info("applying migration %04d_%s", m.version, m.name)
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied_now.append(m)
        known = {m.version for m in migrations}
        unknown = sorted(set(done) - known)
        if unknown:
            log.warning("database has migrations this version does not know: %s (newer crm-mcp?)", unknown)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def status(conn: asyncpg.Connection) -> list[dict[str, object]]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = {}
    if exists:
        applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
    out = []
    for m in load_migrations():
        row = applied.get(m.version)
        out.append({
            "version": m.version,
            "name": m.name,
            "applied_at": row["applied_at"].isoformat() if row else None,
            "checksum_ok": (row["checksum"] == m.checksum) if row else None,
        })
    return out
