"""MCP resources, resource templates, prompts and completions for the CRM.

Resource templates (JSON):
    crm://customers/{customer_id}          customer summary, identities, open tickets, recent conversations
    crm://tickets/{ticket_number}          ticket with history and recent messages
    crm://conversations/{conversation_id}  conversation with its last 50 messages, oldest first
    crm://channels/{channel}/config        channel settings: tone, max length, template, enabled
    crm://agent/turns{?conversation_id}    the answering agent's latest turns (staff review; not for the agent)
Resource:
    crm://metrics/summary                  the last 24 hours in figures

Unknown or malformed ids are ResourceNotFoundError (the protocol's not-found, -32602), never a
crash. Customer-written text is wrapped with untrusted(). Prompts live in prompts.py, completions
in completions.py."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.errors import Unavailable, UserError
from crm_mcp.tools.plumbing.registry import within_deadline

from . import data

log = logging.getLogger(__name__)

JSON = "application/json"


async def _read(crm: Crm, loader: Callable[..., Awaitable[Any]], *args: Any) -> str:
    """One resource read under the tools' deadline: caller mistakes become not-found; a database
    that is unreachable or does not answer in time a (non-crash) resource error saying retry."""
    try:
        async with within_deadline(crm), crm.pool.acquire() as conn:
            result = await loader(conn, *args)
    except UserError as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except (Unavailable, asyncpg.QueryCanceledError) as exc:
        log.warning("resource read failed: database unavailable (%s)", type(exc).__name__)
        raise ResourceError("The CRM database is temporarily unavailable; nothing was read. Retry in a few seconds.") from None
    return data.to_json(result)


def register(server: Any, crm: Crm) -> None:
    @server.resource(
        "crm://customers/{customer_id}",
        name="customer",
        title="Customer",
        description="One customer as JSON: profile, identities (email/phone/WhatsApp), plan, sentiment trend, "
        "open tickets and the 10 most recent conversations. customer_id is the UUID from find_customer.",
        mime_type=JSON,
    )
    async def customer_resource(customer_id: str) -> str:
        return await _read(crm, data.customer_data, customer_id)

    @server.resource(
        "crm://tickets/{ticket_number}",
        name="ticket",
        title="Ticket",
        description="One ticket as JSON: status, priority, category, SLA, its full history (status changes, "
        "assignments, internal notes) and its 20 most recent messages, oldest first. ticket_number like TKT-0042.",
        mime_type=JSON,
    )
    async def ticket_resource(ticket_number: str) -> str:
        return await _read(crm, data.ticket_data, ticket_number)

    @server.resource(
        "crm://conversations/{conversation_id}",
        name="conversation",
        title="Conversation",
        description="One conversation as JSON: channels and switches, status, sentiment, its tickets and its "
        "last 50 messages, oldest first. conversation_id is a UUID.",
        mime_type=JSON,
    )
    async def conversation_resource(conversation_id: str) -> str:
        return await _read(crm, data.conversation_data, conversation_id)

    @server.resource(
        "crm://channels/{channel}/config",
        name="channel_config",
        title="Channel configuration",
        description="Reply settings of a channel (email, whatsapp or web_form) as JSON: tone, maximum reply "
        "length, whether long replies are split, the reply template, and whether the channel is enabled.",
        mime_type=JSON,
    )
    async def channel_config_resource(channel: str) -> str:
        return await _read(crm, data.channel_config, channel)

    @server.resource(
        "crm://agent/turns{?conversation_id}",
        name="agent_turns",
        title="Agent turns",
        description="The answering agent's latest 100 turns as JSON, newest first (of one conversation with "
        "?conversation_id=UUID): decision, escalation reason, tools called, articles used, model, tokens, latency.",
        mime_type=JSON,
    )
    async def agent_turns_resource(conversation_id: str = "") -> str:
        return await _read(crm, data.agent_turns, conversation_id)

    @server.resource(
        "crm://metrics/summary",
        name="metrics_summary",
        title="Support metrics (last 24 h)",
        description="The last 24 hours as JSON: conversations started, messages in and out, tickets opened, "
        "resolved and escalated, SLA breaches, average inbound sentiment, per-channel message counts.",
        mime_type=JSON,
    )
    async def metrics_resource() -> str:
        return await _read(crm, data.last_24h)
