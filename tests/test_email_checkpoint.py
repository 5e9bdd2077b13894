"""bridge_checkpoint: read, first write, compare-and-set, a stale writer refused, bad input named."""

from __future__ import annotations

import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


async def test_checkpoints_move_forward_by_compare_and_set(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as crm:
        key = {"bridge": "email:support@example.com", "key": "imap:INBOX"}
        empty = await call(crm, "bridge_checkpoint", **key)
        assert empty["value"] is None and empty["version"] == 0 and empty["written"] is False
        first = await call(crm, "bridge_checkpoint", **key, value={"uidvalidity": 7, "last_uid": 3}, expect_version=0)
        assert first["written"] and first["version"] == 1
        second = await call(crm, "bridge_checkpoint", **key, value={"uidvalidity": 7, "last_uid": 9}, expect_version=1)
        assert second["written"] and second["version"] == 2
        stale = await call(crm, "bridge_checkpoint", **key, value={"uidvalidity": 7, "last_uid": 4}, expect_version=1)
        assert stale["written"] is False and stale["value"] == {"uidvalidity": 7, "last_uid": 9} and stale["version"] == 2
        again = await call(crm, "bridge_checkpoint", **key, value={"x": 1}, expect_version=0)
        assert again["written"] is False and again["version"] == 2, "a second 'first write' does not overwrite"
        other = await call(crm, "bridge_checkpoint", bridge="email:support@example.com", key="imap:Support")
        assert other["version"] == 0
        assert "expect_version" in await call_error(crm, "bridge_checkpoint", **key, value={"a": 1})
        assert "4096" in await call_error(crm, "bridge_checkpoint", **key, value={"a": "x" * 5000}, expect_version=2)
