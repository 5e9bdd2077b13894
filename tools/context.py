"""What a tool handler gets: settings and the process's one database pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from crm_mcp.server.config import Settings


@dataclass
class Crm:
    settings: Settings
    pool: asyncpg.Pool
    extras: dict[str, Any] = field(default_factory=dict)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn
