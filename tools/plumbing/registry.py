"""The tool registry: every tool is declared once with `@crm_tool` (toolset, the four
annotations) beside its handler, `async def handler(crm: Crm, args: InputModel) -> OutputModel`.

`ToolSpec.run` is the one path a call takes: clean every string once, validate the raw
arguments once with the input model (its JSON schema is what clients see), run the handler,
and turn database trouble into errors a model can act on. The server publishes the specs; this
module knows nothing of transports."""

from __future__ import annotations

import inspect
import logging
import random
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ValidationError

from crm_mcp.tools.plumbing.errors import InvalidArguments, Unavailable
from crm_mcp.tools.plumbing.schema import compact_schema
from crm_mcp.tools.engines.formatting import strip_control_chars

log = logging.getLogger(__name__)

TOOLSETS = ("customers", "conversations", "tickets", "knowledge", "metrics", "commerce", "store", "store_sync")
# Published only when named (CRM_TOOLSETS=all,store,store_sync): a shop's orders, actions and
# preferences are for desks that sell (issue 18), and store_sync is plumbing for the Shopify bridge.
OPT_IN_TOOLSETS = ("store", "store_sync")


def wanted_toolsets(toolsets: str) -> set[str]:
    """'all' (every toolset but the opt-in ones), optionally plus opt-in ones, or a list."""
    parts = set(toolsets.split(","))
    if "all" in parts:
        return (set(TOOLSETS) - set(OPT_IN_TOOLSETS)) | (parts - {"all"})
    return parts


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    toolset: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    handler: Callable[..., Awaitable[BaseModel]]
    annotations: ToolAnnotations

    @property
    def writes(self) -> bool:
        return not self.annotations.read_only_hint

    @property
    def input_schema(self) -> dict[str, Any]:
        return compact_schema(self.input_model.model_json_schema(by_alias=True))

    @property
    def output_schema(self) -> dict[str, Any]:
        return compact_schema(self.output_model.model_json_schema(), output=True)

    async def run(self, crm: Any, arguments: dict[str, Any]) -> BaseModel:
        """Validate once, call the handler, map database failures to errors the caller can act on."""
        try:
            args = self.input_model.model_validate(clean_strings(arguments), context=validation_context(crm))
        except ValidationError as exc:
            raise InvalidArguments(format_validation_error(self.name, exc)) from None
        try:
            async with within_deadline(crm):
                for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
                    try:
                        return await self.handler(crm, args)
                    except TRANSIENT as exc:
                        if attempt == TRANSIENT_ATTEMPTS:
                            raise
                        log.info("tool %s: %s, running it again (attempt %d)", self.name, type(exc).__name__, attempt + 1)
                        await anyio.sleep(random.uniform(0.005, 0.05) * attempt)
                raise AssertionError("unreachable")
        except ToolError:
            raise
        except asyncpg.QueryCanceledError:
            raise ToolError(
                f"{self.name} took longer than the statement timeout and was cancelled; nothing was changed. "
                "Narrow the request (smaller limit, shorter time range) and retry."
            ) from None
        except asyncpg.IntegrityConstraintViolationError as exc:
            log.error("tool %s hit constraint %s", self.name, getattr(exc, "constraint_name", "?"))
            raise ToolError(
                f"{self.name} was rejected by a data integrity rule ({getattr(exc, 'constraint_name', None) or 'constraint'}); "
                "nothing was changed. Check the ids and values you passed."
            ) from None
        except asyncpg.DataError as exc:
            log.warning("tool %s data error: %s", self.name, type(exc).__name__)
            raise ToolError(f"{self.name} received a value the database cannot store ({type(exc).__name__}); nothing was changed.") from None


def call_deadline_s(settings: Any) -> float:
    """The longest any one call (tool, prompt, completion) may take: the statement timeout plus
    a grace of at most 5 s for getting a pooled connection, several statements and our own work.
    Without it a frozen backend held a call for command_timeout and the pool release after it
    (40 s with a 15 s statement timeout), and an exhausted pool waited forever."""
    t = settings.statement_timeout_ms / 1000
    return t + min(t, 5.0)


@asynccontextmanager
async def within_deadline(crm: Any) -> AsyncIterator[None]:
    """Run the block under call_deadline_s; raise Unavailable if the database does not answer in
    time or cannot be reached (one clear, retryable message for every kind of caller)."""
    deadline = call_deadline_s(crm.settings)
    with anyio.move_on_after(deadline) as scope:
        try:
            yield
        except _RETRYABLE as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise Unavailable(type(exc).__name__) from None
        except RuntimeError as exc:
            if "pool" in str(exc).lower() or "closed" in str(exc).lower():
                raise Unavailable("connection pool closed") from None
            raise
    if scope.cancelled_caught:
        log.warning("database did not answer within %.1f s; call cancelled", deadline)
        raise Unavailable(f"no answer within {deadline:g} s")


REGISTRY: list[ToolSpec] = []


def crm_tool(
    *,
    name: str,
    title: str,
    toolset: str,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    if toolset not in TOOLSETS:
        raise ValueError(f"unknown toolset {toolset}")

    def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        input_model = hints[params[1]]
        output_model = hints["return"]
        if any(s.name == name for s in REGISTRY):
            raise ValueError(f"tool {name} declared twice")
        REGISTRY.append(
            ToolSpec(
                name=name,
                title=title,
                toolset=toolset,
                description=inspect.cleandoc(fn.__doc__ or ""),
                input_model=input_model,
                output_model=output_model,
                handler=fn,
                annotations=ToolAnnotations(  # the title is the tool's own, not repeated here
                    readOnlyHint=read_only,
                    destructiveHint=destructive,
                    idempotentHint=idempotent,
                    openWorldHint=open_world,
                ),
            )
        )
        return fn

    return deco


def format_validation_error(tool: str, exc: ValidationError) -> str:
    """Field names and pydantic's own messages only: the rejected values are the caller's data
    and are never echoed back."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"`{loc}`: {msg}")
    return f"Invalid arguments for {tool}: " + "; ".join(parts[:8]) + ". Nothing was changed."


# PostgreSQL breaks a deadlock (or a serialization conflict) by aborting one of the transactions
# involved; the aborted one changed nothing, and every tool handler is one write transaction, so
# running the call again is what any client would do: the server does it, a few times, before the
# caller sees "busy" (seen once in the email bridge's test under load: send_response aborted).
TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
TRANSIENT_ATTEMPTS = 3

_RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
)


def validation_context(crm: Any) -> dict[str, Any]:
    """What the shared parameter types need to normalise (a phone number without a country code
    is read in the configured region)."""
    return {"default_region": crm.settings.default_region}


def clean_strings(value: Any) -> Any:
    """Every string argument, at any depth, loses NUL, control characters (but newline and tab)
    and lone surrogates before any tool sees it: one place, so no free-text field is forgotten."""
    if isinstance(value, str):
        return strip_control_chars(value)
    if isinstance(value, dict):
        return {clean_strings(k): clean_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_strings(v) for v in value]
    return value
