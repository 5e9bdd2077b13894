"""The database as prompts and completions meet it: the tools' deadline and their clear,
retryable message for a database that is down or not answering, sent as a protocol error (the
SDK would otherwise answer a bare Internal error)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.errors import Unavailable
from crm_mcp.tools.plumbing.registry import within_deadline


@asynccontextmanager
async def answering(crm: Crm) -> AsyncIterator[None]:
    try:
        async with within_deadline(crm):
            yield
    except Unavailable as exc:
        raise MCPError(code=INTERNAL_ERROR, message=str(exc)) from None
    except asyncpg.QueryCanceledError:
        raise MCPError(code=INTERNAL_ERROR, message=(
            "The CRM database took longer than the statement timeout; nothing was changed. Retry in a few seconds.")) from None
