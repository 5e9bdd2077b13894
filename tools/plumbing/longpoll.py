"""Long-polling a work queue: claim now; if nothing is there, LISTEN on the queue's NOTIFY channel
and claim again whenever it fires (or a lease lapses) until the caller's deadline.

At most a share of the pool's connections may sit in LISTEN at once, so waiting bridges and
agents can never starve the tools of connections; a waiter beyond that share polls instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

T = TypeVar("T")

LISTEN_SHARE = 0.3
POLL_S = 0.5
_listeners: dict[int, anyio.Semaphore] = {}


def _listen_slots(pool: asyncpg.Pool) -> anyio.Semaphore:
    slots = _listeners.get(id(pool))
    if slots is None:
        slots = _listeners[id(pool)] = anyio.Semaphore(max(1, int(pool.get_max_size() * LISTEN_SHARE)))
    return slots


async def wait_for_work(
    pool: asyncpg.Pool,
    *,
    channel: str,
    deadline: float,
    claim_pooled: Callable[[], Awaitable[T]],
    claim_on: Callable[[asyncpg.Connection], Awaitable[T]],
    found: Callable[[T], bool],
    next_lapse: Callable[[asyncpg.Connection], Awaitable[float | None]],
    wanted: Callable[[str], bool] = lambda payload: True,
) -> T:
    """The caller has claimed once and found nothing. Claim again until `found(result)` or the
    deadline (anyio time): on NOTIFY `channel` (payload accepted by `wanted`), or when the nearest
    lease lapses. `claim_on` runs in a transaction on the listening connection; `claim_pooled`
    takes its own (the polling fallback)."""
    slots = _listen_slots(pool)
    try:
        slots.acquire_nowait()
    except anyio.WouldBlock:
        got = await claim_pooled()
        while not found(got) and anyio.current_time() < deadline:
            await anyio.sleep(min(POLL_S, max(deadline - anyio.current_time(), 0)))
            got = await claim_pooled()
        return got
    try:
        async with pool.acquire() as conn:
            woke = anyio.Event()

            def on_notify(_conn: Any, _pid: int, _chan: str, payload: str) -> None:
                if wanted(payload):
                    woke.set()

            await conn.add_listener(channel, on_notify)
            try:
                while True:
                    # A fresh event before each claim, and the claim after LISTEN: work committed at
                    # any point after the caller's first claim either is claimed here or sets the event.
                    woke = anyio.Event()
                    async with conn.transaction():
                        got = await claim_on(conn)
                    left = deadline - anyio.current_time()
                    if found(got) or left <= 0:
                        return got
                    lapse = await next_lapse(conn)
                    with anyio.move_on_after(min(left, lapse + 0.05) if lapse is not None else left):
                        await woke.wait()
            finally:
                await conn.remove_listener(channel, on_notify)
    finally:
        slots.release()
