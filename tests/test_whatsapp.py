"""The WhatsApp bridge inbound, end to end over real HTTP: `crm-mcp serve --http` (the CRM),
`crm-mcp bridge whatsapp --server URL` (a subprocess with a bridge token), and webhooks signed
as Twilio and Meta sign them. Bad signatures store nothing; retries store one message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest

from .conftest import REPO, call, mcp_client
from .webform_helpers import crm_http
from .whatsapp_fakes import (
    META_VERIFY, fake_provider, meta_envelope, meta_text, provider_env, twilio_inbound, whatsapp,
)

pytestmark = pytest.mark.anyio


async def _rows(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _count(dsn: str) -> int:
    return (await _rows(dsn, "SELECT count(*) AS n FROM messages"))[0]["n"]


async def test_signatures_are_checked_before_anything_is_stored(db_dsn: str, tmp_path: Path) -> None:
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, \
            whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa, httpx.Client(timeout=30) as http:
        form = twilio_inbound("SM" + "a" * 32, "+15551230001", "Hello from Twilio")
        assert wa.post_twilio(http, "/twilio", form, sign=False).status_code == 403
        assert wa.post_twilio(http, "/twilio", form, token="not-the-auth-token").status_code == 403
        valid = wa.post_twilio(http, "/twilio", form)
        assert valid.status_code == 200
        # a valid signature with a field changed in transit
        forged = {**form, "MessageSid": "SM" + "b" * 32}
        sig = valid.request.headers["X-Twilio-Signature"]
        assert http.post(f"{wa.base}/twilio", data=forged, headers={"X-Twilio-Signature": sig}).status_code == 403
        body = meta_envelope(messages=[meta_text("wamid.SIG1", "+15551230002", "Hello from Meta")])
        assert wa.post_meta(http, body, sign=False).status_code == 403
        assert wa.post_meta(http, body, secret="wrong-secret").status_code == 403
        assert http.post(f"{wa.base}/meta", content=body, headers={"X-Hub-Signature-256": "sha1=abc"}).status_code == 403
        assert await _count(db_dsn) == 1, "only the correctly signed Twilio message is stored"
        health = http.get(f"{wa.base}/healthz").json()
        assert health["signature_rejected"] == {"twilio": 3, "meta": 3}
        assert health["providers"] == ["twilio", "meta"]

        ok = wa.post_meta(http, body)
        assert ok.status_code == 200
        assert await _count(db_dsn) == 2
        assert valid.text.startswith("<?xml") and "<Response></Response>" in valid.text
        assert valid.headers["content-type"].startswith("text/xml")

        # the verification handshake: the challenge only for the right token
        q = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": META_VERIFY}
        good = http.get(f"{wa.base}/meta", params=q)
        assert good.status_code == 200 and good.text == "1158201444"
        assert http.get(f"{wa.base}/meta", params={**q, "hub.verify_token": "guess"}).status_code == 403
        assert http.get(f"{wa.base}/meta", params={**q, "hub.mode": "unsubscribe"}).status_code == 403
        # the body size cap, before the signature is even computed
        big = b"{" + b" " * (300 * 1024) + b"}"
        assert wa.post_meta(http, big).status_code == 413
        assert await _count(db_dsn) == 2


async def test_five_concurrent_copies_store_one_message(db_dsn: str, tmp_path: Path) -> None:
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, \
            whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa, httpx.Client(timeout=60) as http:
        form = twilio_inbound("SM" + "c" * 32, "+15551230003", "My order has not arrived")
        body = meta_envelope(messages=[meta_text("wamid.DUP1", "+15551230004", "Refund please")])
        with ThreadPoolExecutor(10) as pool:
            tw = [pool.submit(wa.post_twilio, http, "/twilio", form) for _ in range(5)]
            mt = [pool.submit(wa.post_meta, http, body) for _ in range(5)]
            codes = [f.result().status_code for f in tw + mt]
        assert codes == [200] * 10
        rows = await _rows(db_dsn, "SELECT channel_message_id, channel FROM messages WHERE direction = 'inbound' ORDER BY 1")
        assert [(r["channel"], r["channel_message_id"]) for r in rows] == [("whatsapp", "SM" + "c" * 32), ("whatsapp", "wamid.DUP1")]
        assert len(await _rows(db_dsn, "SELECT id FROM tickets")) == 2
        assert http.get(f"{wa.base}/healthz").json()["ingested"] == 10  # every copy answered after the commit


async def test_media_interactive_location_unsupported_and_names(db_dsn: str, tmp_path: Path) -> None:
    async with mcp_client(db_dsn) as staff:
        known = await call(staff, "upsert_customer", name="Bruno Costa", phone="+15551230005")
        await call(staff, "upsert_customer", phone="+15551230010")  # no name yet
    with fake_provider() as fake, crm_http(db_dsn, tmp_path) as url, \
            whatsapp(url, db_dsn, tmp_path, provider_env(fake)) as wa, httpx.Client(timeout=30) as http:
        posts = [
            wa.post_twilio(http, "/twilio", twilio_inbound(
                "SM" + "d" * 32, "+15551230005", "the broken part", ProfileName="Bruninho", NumMedia="1", MessageType="image",
                MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", MediaContentType0="image/jpeg")),
            wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "e" * 32, "+15551230006", "", MessageType="location",
                                                           Latitude="-23.55", Longitude="-46.63", Label="Office")),
            wa.post_twilio(http, "/twilio", twilio_inbound("SM" + "f" * 32, "+15551230006", "Yes", MessageType="button",
                                                           ButtonText="Yes", ButtonPayload="confirm-yes")),
            wa.post_meta(http, meta_envelope(
                contacts=[{"profile": {"name": "Carla Dias"}, "wa_id": "15551230010"}],
                messages=[{"from": "15551230010", "id": "wamid.IMG", "timestamp": str(int(time.time())), "type": "image",
                           "image": {"id": "MEDIA123", "mime_type": "image/jpeg", "sha256": "x", "caption": "receipt"}},
                          {"from": "15551230010", "id": "wamid.LIST", "timestamp": str(int(time.time())), "type": "interactive",
                           "interactive": {"type": "list_reply", "list_reply": {"id": "plan-pro", "title": "Pro plan"}}},
                          {"from": "15551230010", "id": "wamid.BTN", "timestamp": str(int(time.time())), "type": "interactive",
                           "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Talk to a person"}}},
                          {"from": "15551230010", "id": "wamid.LOC", "timestamp": str(int(time.time())), "type": "location",
                           "location": {"latitude": 38.72, "longitude": -9.14, "name": "Shop", "address": "Rua A 1"}},
                          {"from": "15551230010", "id": "wamid.UNS", "timestamp": str(int(time.time())), "type": "unsupported",
                           "errors": [{"code": 131051, "title": "Message type unknown"}]},
                          {"from": "15551230010", "id": "wamid.DOC", "timestamp": str(int(time.time())), "type": "document",
                           "document": {"id": "MEDIA9", "mime_type": "application/pdf", "filename": "invoice.pdf"}}])),
        ]
        assert [p.status_code for p in posts] == [200] * 4
    rows = {r["channel_message_id"]: r for r in await _rows(
        db_dsn, "SELECT channel_message_id, content, metadata, customer_id FROM messages WHERE direction = 'inbound'")}
    assert len(rows) == 9
    img = rows["SM" + "d" * 32]
    assert img["content"] == "[image attached: the broken part]"
    meta = json.loads(img["metadata"])
    assert meta["provider"] == "twilio" and meta["media"][0]["url"].endswith("/Media/ME1") and meta["caption"] == "the broken part"
    assert rows["SM" + "e" * 32]["content"] == "[location: Office (-23.55, -46.63)]"
    assert rows["SM" + "f" * 32]["content"] == "[button reply: Yes]"
    assert json.loads(rows["SM" + "f" * 32]["metadata"])["interactive"]["id"] == "confirm-yes"
    assert rows["wamid.IMG"]["content"] == "[image attached: receipt]"
    assert json.loads(rows["wamid.IMG"]["metadata"])["media"][0] == {"type": "image", "id": "MEDIA123", "content_type": "image/jpeg"}
    assert rows["wamid.LIST"]["content"] == "[list reply: Pro plan]"
    assert rows["wamid.BTN"]["content"] == "[button reply: Talk to a person]"
    assert rows["wamid.LOC"]["content"] == "[location: Shop, Rua A 1 (38.72, -9.14)]"
    assert rows["wamid.UNS"]["content"] == "[unsupported message type: unsupported]"
    uns = json.loads(rows["wamid.UNS"]["metadata"])
    assert uns["type"] == "unsupported" and uns["unsupported"]["errors"][0]["code"] == 131051
    assert rows["wamid.DOC"]["content"] == "[document attached]"
    # the number known as a phone is the same customer; a known name is never overwritten,
    # an empty one is filled from the WhatsApp profile
    customers = {r["id"]: r["name"] for r in await _rows(db_dsn, "SELECT id, name FROM customers")}
    assert str(img["customer_id"]) == known["customer"]["customer_id"]
    assert customers[img["customer_id"]] == "Bruno Costa"
    assert customers[rows["wamid.IMG"]["customer_id"]] == "Carla Dias"
    assert len(customers) == 3
    idents = await _rows(db_dsn, "SELECT kind, value FROM customer_identifiers WHERE customer_id = $1 ORDER BY kind", img["customer_id"])
    assert ("whatsapp", "+15551230005") in [(r["kind"], r["value"]) for r in idents]


def test_a_half_configured_provider_is_refused_in_one_line(tmp_path: Path) -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "TWILIO_", "META_", "WHATSAPP_"))}
        return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "bridge", "whatsapp", "--port", "1"],
                              env={**base, "CRM_DATA_DIR": str(tmp_path), **env}, cwd=str(REPO), capture_output=True,
                              text=True, timeout=60)

    none = run()
    assert none.returncode == 2 and "no WhatsApp provider configured" in none.stderr and "Traceback" not in none.stderr
    half = run(META_APP_SECRET="s", META_VERIFY_TOKEN="v")
    assert half.returncode == 2 and "Traceback" not in half.stderr
    assert "Meta is half configured: set META_ACCESS_TOKEN, META_PHONE_NUMBER_ID as well" in half.stderr
    bad = run(TWILIO_ACCOUNT_SID="AC1", TWILIO_AUTH_TOKEN="t", TWILIO_WHATSAPP_NUMBER="0800 123")
    assert bad.returncode == 2 and "TWILIO_WHATSAPP_NUMBER must be E.164" in bad.stderr
    params = run(TWILIO_ACCOUNT_SID="AC1", TWILIO_AUTH_TOKEN="t", TWILIO_WHATSAPP_NUMBER="+14155238886",
                 WHATSAPP_TEMPLATE_PARAMS="{ticket_number}")
    assert params.returncode == 2 and "WHATSAPP_TEMPLATE_PARAMS must be a JSON list of strings" in params.stderr
    assert len(params.stderr.strip().splitlines()) == 1
