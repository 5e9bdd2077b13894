"""bridge_checkpoint: a channel bridge's position in its channel (IMAP UIDVALIDITY + last UID,
Gmail historyId), stored in the CRM so a restart fetches nothing twice. Compare-and-set on a
version number, so a stale writer cannot move a checkpoint backwards (migrations/0009)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.errors import InvalidArguments
from crm_mcp.tools.plumbing.registry import crm_tool

MAX_VALUE_BYTES = 4096


class CheckpointInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bridge: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                        description="The bridge instance, e.g. 'email:support@example.com'.")
    key: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$", description="e.g. 'imap:INBOX' or 'gmail:history'.")
    value: dict[str, Any] | None = Field(
        default=None, description=f"Omit to read. To write: a JSON object (at most {MAX_VALUE_BYTES} bytes), with expect_version.")
    expect_version: int | None = Field(
        default=None, ge=0, description="The version you read (0 when absent); the write happens only if it is still current.")

    @field_validator("value")
    @classmethod
    def _small(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(json.dumps(v)) > MAX_VALUE_BYTES:
            raise ValueError(f"value is larger than {MAX_VALUE_BYTES} bytes")
        return v


class CheckpointResult(Out):
    value: dict[str, Any] | None = Field(description="The stored value after the call; None when never written.")
    version: int = Field(description="0 when never written.")
    written: bool = Field(description="False for a read, or a write refused because expect_version was stale (re-read and retry).")
    updated_at: datetime | None


@crm_tool(name="bridge_checkpoint", title="Bridge checkpoint", toolset="conversations", read_only=False, destructive=False, idempotent=True)
async def bridge_checkpoint(crm: Crm, args: CheckpointInput) -> CheckpointResult:
    """For channel bridges: read, or compare-and-set, a small JSON checkpoint per (bridge, key),
    e.g. an IMAP mailbox's UIDVALIDITY and last UID. Omit value to read; to write pass value and
    the expect_version you read (0 if none): a stale version writes nothing (written=false)."""
    async with crm.tx() as conn:
        if args.value is None:
            row = await conn.fetchrow("SELECT value, version, updated_at FROM bridge_checkpoints WHERE bridge = $1 AND key = $2",
                                      args.bridge, args.key)
            written = False
        else:
            if args.expect_version is None:
                raise InvalidArguments("A write needs expect_version: the version you read (0 when the checkpoint does not exist yet).")
            if args.expect_version == 0:
                row = await conn.fetchrow(
                    "INSERT INTO bridge_checkpoints (bridge, key, value, version) VALUES ($1, $2, $3, 1) "
                    "ON CONFLICT (bridge, key) DO NOTHING RETURNING value, version, updated_at",
                    args.bridge, args.key, args.value)
            else:
                row = await conn.fetchrow(
                    "UPDATE bridge_checkpoints SET value = $3, version = version + 1, updated_at = now() "
                    "WHERE bridge = $1 AND key = $2 AND version = $4 RETURNING value, version, updated_at",
                    args.bridge, args.key, args.value, args.expect_version)
            written = row is not None
            if row is None:
                row = await conn.fetchrow("SELECT value, version, updated_at FROM bridge_checkpoints WHERE bridge = $1 AND key = $2",
                                          args.bridge, args.key)
    if row is None:
        return CheckpointResult(value=None, version=0, written=False, updated_at=None)
    return CheckpointResult(value=row["value"], version=row["version"], written=written, updated_at=row["updated_at"])
