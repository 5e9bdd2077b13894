"""The CRM tools and the domain logic behind them, one module per domain.

customers   find_customer, upsert_customer, merge_customers, get_customer_history
intake      ingest_message (dedup, identity, conversation, ticket, sentiment in one transaction)
replies     send_response (the outbox), update_delivery_status, get_conversation, claim_outbox
tickets     create/get/list/update_ticket, escalate_to_human, the state machine, the SLA sweep
knowledge   search_knowledge_base, upsert_kb_article, search_products, import and reindex
metrics     get_metrics, record_feedback

Shared pieces: registry (the catalog, annotations, error mapping), catalog (what is loaded),
identity (email/phone normalisation), rules (sentiment, classification, escalation rules),
formatting (channel templates, splitting, untrusted-text wrapping), embeddings and chunking,
paging (cursors), errors, models, enums, context."""
