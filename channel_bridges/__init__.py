"""Channel bridges: small processes that are MCP clients of the CRM. A bridge feeds a channel's
messages in with ingest_message and delivers the CRM's replies from the outbox (claim_outbox,
then update_delivery_status). It talks MCP only: nothing here imports crm_mcp.server or
crm_mcp.tools (tests/test_bridge_runtime.py checks).

    connection  the MCP client: Streamable HTTP with a bearer token, or `crm-mcp serve` spawned
                over stdio on the local data directory; reconnects with backoff
    retry       exponential backoff with jitter, Retry-After parsing
    delivery    what a channel's deliver callable returns or raises, and the outbound part it gets
    runtime     Bridge: ingest (acknowledge only after commit), the delivery loop, health, shutdown
    logs        structured (JSON) log lines carrying ids only, never personal data
    webform/    the web form and its status page (`crm-mcp bridge webform`)
    email/      one support mailbox over IMAP/SMTP or the Gmail API (`crm-mcp bridge email`)
    agent       the offline answering agent (`crm-mcp agent`): claim_inbound, rules, KB answer or escalation
    agent_policy  the agent's fixed words and decisions (holding reply, answer from a passage), no I/O
"""
