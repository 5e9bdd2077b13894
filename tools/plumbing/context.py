"""What a tool handler gets: the settings it reads, the process's one database pool, and the
few things computed once per process (the embedder, what the pgvector extension can do).

The settings are a Protocol, not the server's Settings class: tools read a handful of values
and must not import the server package (layers point one way: server -> tools)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import asyncpg

if TYPE_CHECKING:
    from crm_mcp.tools.engines.embeddings import Embedder

class CrmSettings(Protocol):
    """The settings tools read. The server's pydantic Settings satisfies it structurally."""

    @property
    def default_region(self) -> str: ...
    @property
    def statement_timeout_ms(self) -> int: ...
    @property
    def conversation_window_hours(self) -> float: ...
    @property
    def escalation_sentiment_threshold(self) -> float: ...
    @property
    def repeat_question_limit(self) -> int: ...
    @property
    def embeddings(self) -> Literal["local", "openai"]: ...
    @property
    def embedding_model(self) -> str | None: ...
    @property
    def openai_api_key(self) -> str | None: ...
    @property
    def openai_base_url(self) -> str | None: ...

    def sla_hours(self, priority: str) -> float: ...


@dataclass
class Crm:
    settings: CrmSettings
    pool: asyncpg.Pool
    # Made on first use (loading the model takes a moment and not every process searches).
    embedder: Embedder | None = None
    # pgvector 0.8+ has iterative index scans; external servers may still run 0.7.
    pgvector_iterative_scan: bool = True

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn


@dataclass(frozen=True)
class Caller:
    actor: str  # token name, JWT subject, 'stdio' or 'no-auth'
    role: str  # one of crm_mcp.server.roles.Role (tools cannot import the server)
    # Whose agent leases this call takes or acts under: '<token kind>:<actor>', or 'stdio:<process>'
    # for one stdio server process. claim_inbound stores it with the lease; record_agent_turn checks it.
    holder: str = ""


# Who is making the tool call in flight, set by the server's guard around every tool call (tools
# cannot import it). Read by tools whose policy depends on the caller (an agent's refund always
# waits for a person), that record who decided, and by the agent lease tools (holder). Unset
# outside a server call (CLI jobs, in-process tests).
CALLER: ContextVar[Caller | None] = ContextVar("crm_caller", default=None)
