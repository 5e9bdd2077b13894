"""The CRM tools and the domain logic behind them.

Domain modules (each declares its tools with @crm_tool beside the handler):
    customers   find_customer, upsert_customer, merge_customers, get_customer_history
    intake      ingest_message (dedup, identity, conversation, ticket, sentiment in one transaction)
    replies     send_response (the outbox), update_delivery_status, get_conversation, claim_outbox
    tickets     create/get/list/update_ticket, escalate_to_human, the state machine, the SLA sweep
    knowledge   search_knowledge_base, upsert_kb_article, search_products, import and reindex
    metrics     get_metrics, record_feedback (past days from the analytics_daily roll-up: analytics.py)
    commerce    find_orders, request_action, decide_action, list_actions, customer preferences, upsert_order
    agent_queue claim_inbound (the answering agent's work queue, leased, long-polling)
    agent_turns record_agent_turn (what the agent did each turn) and the agent's figures for get_metrics
    bridge_state bridge_checkpoint (where a channel bridge has got to: IMAP UIDs, Gmail historyId)
    vocabulary  the closed word lists (channels, statuses, priorities...) shared with the schema
    models      output models several tools share (customer summary, identities, sentiment)

plumbing/   what makes a function an MCP tool: the registry (ToolSpec, @crm_tool, toolsets),
            the typed context handlers receive, shared parameter types, errors, cursors.
engines/    pure computation with no database: rules (sentiment, matching, classification,
            escalation), identity normalisation, channel formatting, chunking, embeddings.

Nothing here imports crm_mcp.server: the server builds a Crm context and publishes all_tools()."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crm_mcp.tools.plumbing.registry import ToolSpec


def all_tools() -> list[ToolSpec]:
    """Every tool, in declaration order (importing a domain module registers its tools)."""
    from crm_mcp.tools import customers, intake, knowledge, metrics, replies, tickets  # noqa: F401
    from crm_mcp.tools import commerce  # noqa: F401
    from crm_mcp.tools import agent_queue, agent_turns  # noqa: F401  (last: their tools list after the ones they build on)
    from crm_mcp.tools import bridge_state  # noqa: F401
    from crm_mcp.tools.plumbing.registry import REGISTRY

    return list(REGISTRY)
