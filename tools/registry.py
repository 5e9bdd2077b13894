"""The tool catalog: every tool is declared once with its toolset, input model and the four
annotations, then registered on the server in catalog order (deterministic tools/list).

A tool handler is `async def handler(crm: Crm, args: InputModel) -> OutputModel`. The wrapper
published to MCP has the input model's fields as flat parameters (so clients see one plain
object schema), validates them again with the model (cross-field rules live there), and turns
database trouble into errors a model can act on."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from .errors import Unavailable, UserError
from .formatting import strip_control_chars

log = logging.getLogger(__name__)

TOOLSETS = ("customers", "conversations", "tickets", "knowledge", "metrics", "commerce")


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


CATALOG: list[ToolSpec] = []


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
        if any(s.name == name for s in CATALOG):
            raise ValueError(f"tool {name} declared twice")
        CATALOG.append(
            ToolSpec(
                name=name,
                title=title,
                toolset=toolset,
                description=inspect.cleandoc(fn.__doc__ or ""),
                input_model=input_model,
                output_model=output_model,
                handler=fn,
                annotations=ToolAnnotations(
                    title=title,
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


def _flat_signature(model: type[BaseModel], model_out: type[BaseModel]) -> inspect.Signature:
    params = []
    for fname, field in model.model_fields.items():
        info = Field(description=field.description, examples=field.examples, title=field.title)
        annotation: Any = Annotated[(field.annotation, *field.metadata, info)]
        default = inspect.Parameter.empty if field.is_required() else field.default
        params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return inspect.Signature(params, return_annotation=model_out)


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


def make_handler(spec: ToolSpec, crm: Any) -> Callable[..., Awaitable[BaseModel]]:
    async def tool(**kwargs: Any) -> BaseModel:
        try:
            args = spec.input_model.model_validate(clean_strings(kwargs))
        except ValidationError as exc:
            raise UserError(format_validation_error(spec.name, exc)) from None
        try:
            return await spec.handler(crm, args)
        except ToolError:
            raise
        except asyncpg.QueryCanceledError:
            raise ToolError(
                f"{spec.name} took longer than the statement timeout and was cancelled; nothing was changed. "
                "Narrow the request (smaller limit, shorter time range) and retry."
            ) from None
        except asyncpg.IntegrityConstraintViolationError as exc:
            log.error("tool %s hit constraint %s: %s", spec.name, getattr(exc, "constraint_name", "?"), exc)
            raise ToolError(
                f"{spec.name} was rejected by a data integrity rule ({getattr(exc, 'constraint_name', None) or 'constraint'}); "
                "nothing was changed. Check the ids and values you passed."
            ) from None
        except asyncpg.DataError as exc:
            log.warning("tool %s data error: %s", spec.name, type(exc).__name__)
            raise ToolError(f"{spec.name} received a value the database cannot store ({type(exc).__name__}); nothing was changed.") from None
        except _RETRYABLE as exc:
            log.warning("tool %s: database unavailable: %s", spec.name, type(exc).__name__)
            raise Unavailable(type(exc).__name__) from None
        except RuntimeError as exc:
            if "pool" in str(exc).lower() or "closed" in str(exc).lower():
                raise Unavailable("connection pool closed") from None
            raise

    tool.__name__ = spec.name
    tool.__doc__ = spec.description
    tool.__signature__ = _flat_signature(spec.input_model, spec.output_model)  # type: ignore[attr-defined]
    tool.__annotations__ = {"return": spec.output_model}
    return tool


def selected_specs(toolsets: str, read_only: bool) -> list[ToolSpec]:
    wanted = set(TOOLSETS) if toolsets == "all" else {t for t in toolsets.split(",")}
    unknown = wanted - set(TOOLSETS)
    if unknown:
        raise ValueError(f"unknown toolset(s) {sorted(unknown)}; valid: {', '.join(TOOLSETS)} or all")
    # Read-only mode wins over everything: a writing tool is never exposed under it.
    specs = [s for s in CATALOG if s.toolset in wanted and not (read_only and s.writes)]
    # Grouped by toolset in TOOLSETS order, declaration order within (sorted() is stable).
    return sorted(specs, key=lambda s: TOOLSETS.index(s.toolset))
