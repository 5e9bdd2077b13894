"""get_metrics and record_feedback over stdio, with data driven through the real tools."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from .conftest import call, call_error

pytestmark = pytest.mark.anyio


def email(cmid: str, addr: str, content: str = "How do I export my form responses to CSV?") -> dict:
    return {"channel": "email", "channel_message_id": cmid, "sender": {"email": addr, "name": "Ana"}, "content": content}


def whatsapp(cmid: str, number: str, content: str = "How do I add a second admin to my workspace?") -> dict:
    return {"channel": "whatsapp", "channel_message_id": cmid, "sender": {"whatsapp": number, "name": "Wes"}, "content": content}


async def scenario(client) -> dict:
    """email: A (AI reply, resolved), D (no reply). whatsapp: B (AI + human reply, resolved), C (escalated)."""
    a = await call(client, "ingest_message", **email("gm-a", "ana@example.com"))
    b = await call(client, "ingest_message", **whatsapp("SM-b", "+12025550101"))
    c = await call(client, "ingest_message", **whatsapp("SM-c", "+12025550102", "Where can I see my invoices?"))
    d = await call(client, "ingest_message", **email("gm-d", "dan@example.com", "Can I change the form colours?"))
    ra = await call(client, "send_response", ticket_number=a["ticket"]["ticket_number"], body="Use Export > CSV.", author="agent")
    rb1 = await call(client, "send_response", ticket_number=b["ticket"]["ticket_number"], body="Open Settings > Team.", author="agent")
    rb2 = await call(client, "send_response", ticket_number=b["ticket"]["ticket_number"], body="I added them for you.", author="human")
    for t in (a, b):
        await call(client, "update_ticket", ticket_number=t["ticket"]["ticket_number"], status="resolved", resolution_notes="Explained.")
    await call(client, "escalate_to_human", ticket_number=c["ticket"]["ticket_number"], reason="Customer asked for a person")
    return {"a": a, "b": b, "c": c, "d": d, "ra": ra, "rb1": rb1, "rb2": rb2}


def by_channel(r: dict) -> dict:
    return {e["channel"]: e for e in r["channels"]}


async def test_metrics_from_real_activity(client) -> None:
    s = await scenario(client)
    # feedback: A's AI reply rated 5 then 2 (replaced); B's ticket 4; C's ticket 5; B's human reply 1
    f1 = await call(client, "record_feedback", message_id=s["ra"]["parts"][0]["message_id"], rating=5)
    f2 = await call(client, "record_feedback", message_id=s["ra"]["parts"][0]["message_id"], rating=2, comment="Too\x07 short")
    assert f1["replaced"] is False and f2["replaced"] is True and f2["previous_rating"] == 5
    assert f2["feedback_id"] == f1["feedback_id"] and "Too short" in f2["comment"]
    await call(client, "record_feedback", ticket_number=s["b"]["ticket"]["ticket_number"], rating=4)
    await call(client, "record_feedback", ticket_number=s["c"]["ticket"]["ticket_number"].lower(), rating=5)
    await call(client, "record_feedback", message_id=s["rb2"]["parts"][0]["message_id"], rating=1)

    r = await call(client, "get_metrics")
    ch = by_channel(r)
    assert [e["channel"] for e in r["channels"]] == ["email", "whatsapp", "web_form", "total"]
    since, until = datetime.fromisoformat(r["since"]), datetime.fromisoformat(r["until"])
    assert until - since == timedelta(hours=24)

    em, wa, web, tot = ch["email"], ch["whatsapp"], ch["web_form"], ch["total"]
    assert (em["conversations"], em["messages_in"], em["messages_out"]) == (2, 2, 1)
    assert (wa["conversations"], wa["messages_in"], wa["messages_out"]) == (2, 2, 2)  # the escalation notice is not counted
    assert (tot["conversations"], tot["messages_in"], tot["messages_out"]) == (4, 4, 3)
    assert (em["tickets_opened"], em["tickets_resolved"], em["tickets_escalated_in_period"]) == (2, 1, 0)
    assert (wa["tickets_opened"], wa["tickets_resolved"], wa["tickets_escalated_in_period"]) == (2, 1, 1)
    assert (tot["tickets_opened"], tot["tickets_resolved"], tot["tickets_escalated_in_period"]) == (4, 2, 1)
    assert em["opened_tickets_escalation_rate"] == {"value": 0.0, "numerator": 0, "denominator": 2}
    assert wa["opened_tickets_escalation_rate"] == {"value": 0.5, "numerator": 1, "denominator": 2}
    assert tot["opened_tickets_escalation_rate"] == {"value": 0.25, "numerator": 1, "denominator": 4}
    # B had a human reply: only A counts as resolved by the AI
    assert em["ai_resolution_rate"] == {"value": 1.0, "numerator": 1, "denominator": 1}
    assert wa["ai_resolution_rate"] == {"value": 0.0, "numerator": 0, "denominator": 1}
    assert tot["ai_resolution_rate"] == {"value": 0.5, "numerator": 1, "denominator": 2}
    # CSAT: email [2]; whatsapp [4, 5, 1]; the replaced 5 is gone
    assert em["csat"] == {"value": 0.0, "numerator": 0, "denominator": 1}
    assert wa["csat"] == {"value": 0.6667, "numerator": 2, "denominator": 3}
    assert tot["csat"] == {"value": 0.5, "numerator": 2, "denominator": 4}
    # sentiment: mean of the inbound scores
    scores = {k: s[k]["sentiment"] for k in "abcd"}
    assert tot["avg_sentiment"] == pytest.approx(sum(scores.values()) / 4, abs=1e-3)
    assert em["avg_sentiment"] == pytest.approx((scores["a"] + scores["d"]) / 2, abs=1e-3)
    # timings: counts exact, values sane
    assert em["first_response_s"]["samples"] == 1 and wa["first_response_s"]["samples"] == 1
    assert tot["first_response_s"]["samples"] == 2 and tot["first_response_s"]["median"] >= 0
    assert tot["first_response_s"]["p90"] >= tot["first_response_s"]["median"]
    assert tot["resolution_s"]["samples"] == 2 and tot["resolution_s"]["median"] >= 0
    assert (em["response_latency_ms"]["samples"], wa["response_latency_ms"]["samples"], tot["response_latency_ms"]["samples"]) == (1, 2, 3)
    # no data: zeros and nulls, never a division by zero
    assert web["conversations"] == 0 and web["tickets_opened"] == 0
    assert web["opened_tickets_escalation_rate"] == {"value": None, "numerator": 0, "denominator": 0}
    assert web["csat"]["value"] is None and web["ai_resolution_rate"]["value"] is None and web["avg_sentiment"] is None
    assert web["first_response_s"] == {"median": None, "p90": None, "samples": 0}

    # channel filter: that channel and a total equal to it
    only = await call(client, "get_metrics", channel="whatsapp", window="1h")
    assert [e["channel"] for e in only["channels"]] == ["whatsapp", "total"]
    w, t = only["channels"]
    assert {k: v for k, v in w.items() if k != "channel"} == {k: v for k, v in t.items() if k != "channel"}
    assert w["tickets_opened"] == 2 and w["csat"]["denominator"] == 3

    # the same period by since/until; a period in the past is empty
    now = datetime.now(timezone.utc)
    custom = by_channel(await call(client, "get_metrics", since=(now - timedelta(hours=1)).isoformat(),
                                   until=(now + timedelta(minutes=1)).isoformat()))
    assert custom["total"]["tickets_opened"] == 4 and custom["total"]["csat"]["numerator"] == 2
    past = by_channel(await call(client, "get_metrics", since="2020-01-01T00:00:00Z", until="2020-02-01T00:00:00+00:00"))
    assert past["total"]["messages_in"] == 0 and past["total"]["ai_resolution_rate"]["value"] is None


async def test_get_metrics_period_validation(client) -> None:
    now = datetime.now(timezone.utc)
    err = await call_error(client, "get_metrics", window="7d", since=(now - timedelta(days=1)).isoformat())
    assert "either window or since" in err
    err = await call_error(client, "get_metrics", until=now.isoformat())
    assert "until needs since" in err
    err = await call_error(client, "get_metrics", since=now.isoformat(), until=(now - timedelta(hours=1)).isoformat())
    assert "earlier than until" in err
    err = await call_error(client, "get_metrics", since=(now - timedelta(days=400)).isoformat())
    assert "366 days" in err
    err = await call_error(client, "get_metrics", since="2026-01-01T00:00:00")
    assert "time zone" in err
    err = await call_error(client, "get_metrics", window="2h")
    assert "window" in err
    r = await call(client, "get_metrics", window="30d")
    assert by_channel(r)["total"]["tickets_opened"] == 0


async def test_feedback_replace_semantics_and_filled_fields(client, db_dsn: str) -> None:
    a = await call(client, "ingest_message", **email("gm-f", "fay@example.com"))
    number = a["ticket"]["ticket_number"]
    reply = await call(client, "send_response", ticket_number=number, body="Here is how.", author="human")
    mid = reply["parts"][0]["message_id"]
    m1 = await call(client, "record_feedback", message_id=mid, rating=3, comment="ok")
    assert m1["target"] == "message" and m1["ticket_number"] == number and m1["channel"] == "email"
    assert m1["customer_id"] == a["customer"]["customer_id"] and m1["conversation_id"] == a["conversation"]["conversation_id"]
    m2 = await call(client, "record_feedback", message_id=mid, rating=4)
    assert m2["replaced"] is True and m2["previous_rating"] == 3 and m2["comment"] is None
    t1 = await call(client, "record_feedback", ticket_number=number, rating=5, comment="Great help")
    assert t1["target"] == "ticket" and t1["replaced"] is False and t1["message_id"] is None
    t2 = await call(client, "record_feedback", ticket_number=number, rating=1)
    assert t2["replaced"] is True and t2["previous_rating"] == 5 and t2["feedback_id"] == t1["feedback_id"]
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT message_id, ticket_id, rating, comment, channel FROM feedback ORDER BY rating")
    finally:
        await conn.close()
    assert [(r["rating"], r["comment"], r["channel"]) for r in rows] == [(1, None, "email"), (4, None, "email")]
    assert rows[0]["message_id"] is None and rows[1]["message_id"] == uuid.UUID(mid)
    assert rows[0]["ticket_id"] == rows[1]["ticket_id"] is not None
    r = by_channel(await call(client, "get_metrics"))
    assert r["email"]["csat"] == {"value": 0.5, "numerator": 1, "denominator": 2}


async def test_feedback_bad_inputs_are_clean_errors(client) -> None:
    c = await call(client, "ingest_message", **whatsapp("SM-x", "+12025550109"))
    number = c["ticket"]["ticket_number"]
    await call(client, "escalate_to_human", ticket_number=number, reason="Needs a person")
    conv = await call(client, "get_conversation", conversation_id=c["conversation"]["conversation_id"])
    system_id = next(m["message_id"] for m in conv["messages"] if m["role"] == "system")

    err = await call_error(client, "record_feedback", ticket_number="TKT-9999", rating=4)
    assert "No ticket TKT-9999" in err and "list_tickets" in err
    err = await call_error(client, "record_feedback", ticket_number="ticket 5", rating=4)
    assert "TKT-0042" in err
    err = await call_error(client, "record_feedback", message_id=c["message_id"], rating=4)
    assert "customer message" in err and "ticket_number" in err
    err = await call_error(client, "record_feedback", message_id=system_id, rating=4)
    assert "system notice" in err
    err = await call_error(client, "record_feedback", message_id=str(uuid.uuid4()), rating=4)
    assert "No message" in err
    err = await call_error(client, "record_feedback", message_id="not-a-uuid", rating=4)
    assert "UUID" in err
    for bad in (0, 6):
        err = await call_error(client, "record_feedback", ticket_number=number, rating=bad)
        assert "rating" in err
    err = await call_error(client, "record_feedback", ticket_number=number, message_id=system_id, rating=4)
    assert "exactly one" in err
    err = await call_error(client, "record_feedback", rating=4)
    assert "exactly one" in err
    err = await call_error(client, "record_feedback", ticket_number=number, rating=4, comment="x" * 2001)
    assert "comment" in err
    r = by_channel(await call(client, "get_metrics"))
    assert r["total"]["csat"]["denominator"] == 0
