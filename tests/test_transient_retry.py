"""A tool whose transaction PostgreSQL aborts to break a real deadlock is run again by the server,
and the caller gets its result; one that keeps failing ends as the retryable "busy" error."""

from __future__ import annotations

import anyio
import asyncpg
import pytest
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from crm_mcp.server.app import open_crm
from crm_mcp.server.config import load_settings
from crm_mcp.tools.plumbing import registry
from crm_mcp.tools.plumbing.errors import Unavailable

pytestmark = pytest.mark.anyio
A, B = 71_001, 71_002  # advisory lock keys of this test


class Empty(BaseModel):
    pass


class Done(BaseModel):
    attempts: int


def spec(handler) -> registry.ToolSpec:  # type: ignore[no-untyped-def]
    return registry.ToolSpec(name="deadlock_probe", title="probe", toolset="tickets", description="probe",
                             input_model=Empty, output_model=Done, handler=handler,
                             annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                                                         openWorldHint=False))


async def test_a_deadlock_victim_is_run_again(db_dsn: str) -> None:
    attempts = 0
    holds_a, got_b = anyio.Event(), anyio.Event()
    other = await asyncpg.connect(db_dsn)

    async def other_side() -> None:
        await holds_a.wait()
        async with other.transaction():
            await other.execute("SET LOCAL deadlock_timeout = '10s'")
            await other.execute("SELECT pg_advisory_xact_lock($1)", B)
            got_b.set()
            await other.execute("SELECT pg_advisory_xact_lock($1)", A)  # waits for the tool's transaction

    async def handler(crm, args: Empty) -> Done:  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        async with crm.tx() as conn:
            # this side checks for deadlocks first, so PostgreSQL aborts this side
            await conn.execute("SET LOCAL deadlock_timeout = '100ms'")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", A)
            if attempts == 1:
                holds_a.set()
                await got_b.wait()
                await anyio.sleep(0.2)  # the other side is now waiting for A
            await conn.execute("SELECT pg_advisory_xact_lock($1)", B)  # on the first attempt: the cycle
        return Done(attempts=attempts)

    async def always(crm, args: Empty) -> Done:  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    try:
        async with open_crm(load_settings(database_url=db_dsn), background=False) as crm:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(other_side)
                    out = await spec(handler).run(crm, {})
            assert isinstance(out, Done) and out.attempts == 2

            attempts = 0
            with pytest.raises(Unavailable):
                await spec(always).run(crm, {})
            assert attempts == registry.TRANSIENT_ATTEMPTS
    finally:
        await other.close()
