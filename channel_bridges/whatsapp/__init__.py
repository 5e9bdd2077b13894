"""WhatsApp bridge: Twilio and the Meta Cloud API in one process (`crm-mcp bridge whatsapp`)."""
