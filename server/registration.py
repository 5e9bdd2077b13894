"""Publishing the CRM on an MCPServer: every selected tool from its registry spec, then the
resources, prompts and completions.

A tool is published as a `CrmTool`: its input schema is the input model's own JSON schema and a
call goes straight to `ToolSpec.run`, which validates the raw arguments once. (The SDK's default
path would build a second model from a function signature and validate twice.) Results go out as
structured content plus a compact text rendering: no indentation, no null fields."""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel

from crm_mcp import resources
from crm_mcp.tools import all_tools
from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.registry import TOOLSETS, ToolSpec, wanted_toolsets


class CrmTool(Tool):
    spec: ToolSpec
    crm: Any

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        # UserError / ToolError propagate as they are: the SDK turns them into an is_error result
        # with our message alone (no "Error executing tool ..." prefix stacked on top).
        result = await self.spec.run(self.crm, arguments)
        return to_call_result(result) if convert_result else result


FLOAT_DECIMALS = 4


def rounded(value: Any) -> Any:
    """Floats to 4 decimal places: sentiment is stored as float4, and 0.5929999947547913 is noise
    a model pays for in tokens."""
    if isinstance(value, float):
        return round(value, FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def to_call_result(model: BaseModel) -> CallToolResult:
    """structuredContent carries every field (its schema's contract); the text rendering, which
    many clients hand to the model, is compact JSON without null fields."""
    data = rounded(model.model_dump(mode="json"))
    text = json.dumps(without_nulls(data), ensure_ascii=False, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def make_tool(spec: ToolSpec, crm: Crm) -> CrmTool:
    return CrmTool(
        fn=spec.handler,
        name=spec.name,
        title=spec.title,
        description=spec.description,
        parameters=spec.input_schema,
        fn_metadata=FuncMetadata(arg_model=ArgModelBase, output_schema=spec.output_schema),
        is_async=True,
        annotations=spec.annotations,
        spec=spec,
        crm=crm,
    )


def selected_specs(toolsets: str, read_only: bool) -> list[ToolSpec]:
    wanted = wanted_toolsets(toolsets)
    unknown = wanted - set(TOOLSETS)
    if unknown:
        raise ValueError(f"unknown toolset(s) {sorted(unknown)}; valid: {', '.join(TOOLSETS)} or all")
    # Read-only mode wins over everything: a writing tool is never exposed under it.
    specs = [s for s in all_tools() if s.toolset in wanted and not (read_only and s.writes)]
    # Grouped by toolset in TOOLSETS order, declaration order within (sorted() is stable).
    return sorted(specs, key=lambda s: TOOLSETS.index(s.toolset))


def build_tools(crm: Crm, *, toolsets: str, read_only: bool) -> list[Tool]:
    return [make_tool(spec, crm) for spec in selected_specs(toolsets, read_only)]


def register_extras(server: MCPServer[Any], crm: Crm) -> None:
    """Resources, resource templates, prompts and completions."""
    resources.register(server, crm)
