"""Who may do what: the one role policy, enforced server-side by crm_mcp.server.guard.

Roles:
    admin     everything (token administration is the CLI's, on the database host)
    staff     every CRM tool, resource, prompt and completion except the audit log
    agent     the tools the AI agent answers a conversation with, each limited to the customer of
              a conversation the caller holds a lease on (AGENT_SCOPE, checked by server/lease_scope.py).
              No resources, prompts or completions: they name any customer, outside the lease
    bridge    channel plumbing only: intake, outbox claim, delivery status, a customer's own ticket
              updates for a status page (both ids needed). No customer lookup,
              no history, no knowledge-base writes, no resources, prompts or completions
    readonly  every tool whose readOnlyHint is true, resources, prompts, completions

Tools: admin and staff may call every tool; readonly every tool annotated read-only (derived
from the tool's own annotations, so a new read tool needs no entry here). agent and bridge get
exactly the tools listed in EXTRA_ROLES. Adding a tool for them is one line there, and for the
agent one more in AGENT_SCOPE (a tool without it is refused to agents: fail closed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

Role = Literal["admin", "staff", "agent", "bridge", "readonly"]
ROLES: tuple[Role, ...] = get_args(Role)

# Scopes an external issuer grants, mapped to roles; the first one present (in ROLES order) wins.
SCOPE_PREFIX = "crm:"

# Roles beyond admin/staff (and readonly for read tools) allowed to call a tool.
EXTRA_ROLES: dict[str, frozenset[Role]] = {
    "get_customer_history": frozenset({"agent"}),
    "get_conversation": frozenset({"agent"}),
    "get_ticket": frozenset({"agent"}),
    "search_knowledge_base": frozenset({"agent"}),
    "search_products": frozenset({"agent"}),
    "send_response": frozenset({"agent"}),
    "create_ticket": frozenset({"agent"}),
    "update_ticket": frozenset({"agent"}),
    "escalate_to_human": frozenset({"agent"}),
    "claim_inbound": frozenset({"agent"}),  # the agent's work queue
    "record_agent_turn": frozenset({"agent"}),
    "find_orders": frozenset({"agent"}),
    "request_action": frozenset({"agent"}),  # an agent's refund always waits for approval (tools/commerce.py)
    "ingest_message": frozenset({"bridge"}),
    "update_delivery_status": frozenset({"bridge"}),
    "claim_outbox": frozenset({"bridge"}),
    "get_ticket_updates": frozenset({"bridge"}),  # what a status page shows the customer of their own ticket
    "upsert_order": frozenset({"bridge"}),  # the Shopify bridge (toolset store_sync)
    "bridge_checkpoint": frozenset({"bridge"}),  # where a bridge has got to in its channel (IMAP UIDs, Gmail historyId)
}

# What an agent's call names, argument -> kind, checked against the conversations the caller holds
# a lease on (server/lease_scope.py resolves each kind in SQL): customer = a customer id;
# conversation = a conversation id; ticket = a ticket number; order = an order number or the
# store's order id; message = a message of a conversation the caller holds or held last (for the
# turn record, written after the reply ended the lease). UNSCOPED: touches no customer's data.
# An agent tool missing here is refused to agents.
ScopeKind = Literal["customer", "conversation", "ticket", "order", "message"]
UNSCOPED: dict[str, ScopeKind] = {}
AGENT_SCOPE: dict[str, dict[str, ScopeKind]] = {
    "get_customer_history": {"customer_id": "customer"},
    "get_conversation": {"conversation_id": "conversation"},
    "get_ticket": {"ticket_number": "ticket"},
    "send_response": {"ticket_number": "ticket", "conversation_id": "conversation"},
    "create_ticket": {"customer_id": "customer", "conversation_id": "conversation"},
    "update_ticket": {"ticket_number": "ticket"},
    "escalate_to_human": {"ticket_number": "ticket"},
    "record_agent_turn": {"message_id": "message"},
    "find_orders": {"customer_id": "customer", "order_number": "order"},
    "request_action": {"order_number": "order", "conversation_id": "conversation"},
    "search_knowledge_base": UNSCOPED,
    "search_products": UNSCOPED,
    "claim_inbound": UNSCOPED,  # takes a lease; never names a customer
}

# Resources: URI (or URI template) -> roles. Anything not listed: staff readers. Not the agent:
# resources, prompts and completions take any customer's id, outside its lease scope.
_READERS: frozenset[Role] = frozenset({"admin", "staff", "readonly"})
RESOURCE_ROLES: dict[str, frozenset[Role]] = {
    "crm://audit": frozenset({"admin"}),
}
# Prompts and completions read customer data: staff readers only.
PROMPT_ROLES = _READERS
COMPLETION_ROLES = _READERS  # completions list customer identities: roles that may read any customer


def tool_roles(name: str, read_only: bool) -> frozenset[Role]:
    roles: set[Role] = {"admin", "staff"}
    if read_only:
        roles.add("readonly")
    roles |= EXTRA_ROLES.get(name, frozenset())
    return frozenset(roles)


def may_call(role: Role, name: str, read_only: bool) -> bool:
    return role in tool_roles(name, read_only)


def resource_roles(uri: str) -> frozenset[Role]:
    # A template's query part ({?x}) and a read's (?x=1) both go: one entry covers both.
    return RESOURCE_ROLES.get(uri.split("{?", 1)[0].split("?", 1)[0].rstrip("/"), _READERS)


def may_read_resource(role: Role, uri: str) -> bool:
    return role in resource_roles(uri)


def may_use_prompts(role: Role) -> bool:
    return role in PROMPT_ROLES


def may_complete(role: Role) -> bool:
    return role in COMPLETION_ROLES


def ordered(roles: Iterable[Role]) -> list[Role]:
    s = set(roles)
    return [r for r in ROLES if r in s]


def denial(role: Role, what: str, allowed: Iterable[Role]) -> str:
    """The one-line refusal every surface uses: who is refused, what, and who may."""
    may = ordered(allowed)
    return (f"Permission denied: role '{role}' may not {what}. "
            f"Allowed role{'s' if len(may) != 1 else ''}: {', '.join(may)}. Nothing was changed.")


def role_from_scopes(scopes: Iterable[str]) -> Role | None:
    """crm:admin, crm:staff, ... -> the most privileged role present (ROLES order)."""
    granted = {s.removeprefix(SCOPE_PREFIX) for s in scopes if s.startswith(SCOPE_PREFIX)}
    return next((r for r in ROLES if r in granted), None)


def scope_for(role: Role) -> str:
    return SCOPE_PREFIX + role
