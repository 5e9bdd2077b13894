"""find_customer and upsert_customer over stdio, in both protocol eras."""

from __future__ import annotations

import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


async def test_tools_list_and_find_both_eras(db_dsn: str, mode: str) -> None:
    async with mcp_client(db_dsn, mode=mode) as client:
        tools = (await client.list_tools()).tools
        names = [t.name for t in tools]
        assert "find_customer" in names and "upsert_customer" in names
        created = await call(client, "upsert_customer", name="Jane Roe", email="Jane.Roe@Example.COM", phone="+1 (202) 555-0142")
        assert created["created"] is True
        cid = created["customer"]["customer_id"]
        kinds = {(i["kind"], i["value"]) for i in created["customer"]["identities"]}
        assert kinds == {("email", "jane.roe@example.com"), ("phone", "+12025550142")}

        by_email = await call(client, "find_customer", query="JANE.roe@example.com")
        assert by_email["matched_by"] == "email"
        assert [m["customer_id"] for m in by_email["matches"]] == [cid]

        by_wa = await call(client, "find_customer", query="whatsapp:+12025550142")
        assert [m["customer_id"] for m in by_wa["matches"]] == [cid]
        by_local = await call(client, "find_customer", query="(202) 555-0142")
        assert by_local["normalized_query"] == "+12025550142"
        assert [m["customer_id"] for m in by_local["matches"]] == [cid]
        by_name = await call(client, "find_customer", query="roe")
        assert by_name["matched_by"] == "name" and by_name["matches"][0]["customer_id"] == cid
        by_id = await call(client, "find_customer", query=cid)
        assert by_id["matches"][0]["plan"] == "free"


async def test_upsert_is_idempotent_and_updates(client) -> None:
    a = await call(client, "upsert_customer", email="sam@example.org", name="Sam")
    b = await call(client, "upsert_customer", email="SAM@example.org")
    assert a["customer"]["customer_id"] == b["customer"]["customer_id"]
    assert b["created"] is False and b["linked_identities"] == []
    c = await call(client, "upsert_customer", customer_id=a["customer"]["customer_id"], plan="professional",
                   whatsapp="whatsapp:+44 7700 900123")
    assert c["updated_fields"] == ["plan"]
    assert c["linked_identities"] == [{"kind": "whatsapp", "value": "+447700900123", "verified": False}]
    assert c["customer"]["plan"] == "professional"


async def test_bad_input_is_a_clear_error_and_changes_nothing(client) -> None:
    err = await call_error(client, "upsert_customer", email="not-an-email", name="X")
    assert "Invalid email" in err
    err = await call_error(client, "upsert_customer", phone="12", name="X")
    assert "phone" in err.lower()
    err = await call_error(client, "upsert_customer", customer_id="3f2b8c1e-0000-4000-8000-000000000000", plan="starter")
    assert "No customer" in err and "find_customer" in err
    err = await call_error(client, "upsert_customer", email="a@example.com", plan="gold")
    assert "plan" in err and "'enterprise'" in err and "gold" not in err  # lists valid values, does not echo input
    err = await call_error(client, "find_customer", query="x", limit=500)
    assert "limit" in err
    none = await call(client, "find_customer", query="nobody@example.com")
    assert none["matches"] == [] and "upsert_customer" in none["note"]


async def test_identity_owned_by_another_customer_is_refused(client) -> None:
    a = await call(client, "upsert_customer", email="one@example.com")
    await call(client, "upsert_customer", email="two@example.com")
    err = await call_error(client, "upsert_customer", customer_id=a["customer"]["customer_id"], email="two@example.com")
    assert "merge_customers" in err
    ok = await call(client, "upsert_customer", email="one@example.com", phone="+1 202 555 0100")
    assert ok["customer"]["customer_id"] == a["customer"]["customer_id"]
    err = await call_error(client, "upsert_customer", email="two@example.com", phone="+1 202 555 0100")
    assert "2 different customers" in err and "merge_customers" in err


async def test_merge_customers_moves_everything_and_is_audited(client) -> None:
    a = await call(client, "ingest_message", channel="email", channel_message_id="m-a", sender={"email": "pat@example.com", "name": "Pat"},
                   content="How do I change my card?")
    b = await call(client, "ingest_message", channel="whatsapp", channel_message_id="m-b", sender={"whatsapp": "+12025550199"},
                   content="hi it's Pat again, card question")
    pa, pb = a["customer"]["customer_id"], b["customer"]["customer_id"]
    assert pa != pb
    merged = await call(client, "merge_customers", primary_id=pa, duplicate_id=pb, reason="same person on WhatsApp")
    assert merged["moved"]["identities"] == 1 and merged["moved"]["messages"] == 1 and merged["moved"]["tickets"] == 1
    kinds = {i["kind"] for i in merged["customer"]["identities"]}
    assert kinds == {"email", "whatsapp"}
    assert merged["customer"]["total_interactions"] == 2
    again = await call(client, "merge_customers", primary_id=pa, duplicate_id=pb)
    assert again["already_merged"] is True
    found = await call(client, "find_customer", query="whatsapp:+12025550199")
    assert found["matches"][0]["customer_id"] == pa
    hist = await call(client, "get_customer_history", customer_id=pa, limit=3)
    assert len(hist["events"]) == 3 and hist["next_cursor"]
    rest = await call(client, "get_customer_history", customer_id=pa, limit=50, cursor=hist["next_cursor"])
    kinds = [e["kind"] for e in hist["events"] + rest["events"]]
    assert kinds.count("message") == 2 and kinds.count("ticket") == 2 and kinds.count("conversation") == 2
    wa = await call(client, "get_customer_history", customer_id=pa, channel="whatsapp")
    assert {e["channel"] for e in wa["events"]} == {"whatsapp"}
    msg = next(e for e in wa["events"] if e["kind"] == "message")
    assert msg["text"].startswith("<untrusted-customer-content")


async def test_merge_refuses_conflicting_verified_identities(client) -> None:
    a = await call(client, "upsert_customer", email="x1@example.com", verified=True)
    b = await call(client, "upsert_customer", email="x2@example.com", verified=True)
    err = await call_error(client, "merge_customers", primary_id=a["customer"]["customer_id"], duplicate_id=b["customer"]["customer_id"])
    assert "verified email" in err
    assert "same customer" in await call_error(client, "merge_customers", primary_id=a["customer"]["customer_id"],
                                                duplicate_id=a["customer"]["customer_id"])
