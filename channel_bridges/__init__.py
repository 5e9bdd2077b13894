"""Channel bridges (web form, WhatsApp via Twilio and Meta, email via Gmail and IMAP/SMTP) and the
agent that answers through MCP. Not built yet: bridges feed messages in with ingest_message and
deliver replies from the outbox (crm_mcp.tools.replies.claim_outbox, update_delivery_status)."""
