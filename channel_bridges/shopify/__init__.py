"""The Shopify bridge: orders into the CRM (issue 18). An MCP client of the CRM like every bridge,
calling one tool, upsert_order (toolset store_sync, role bridge).

    settings.py  SHOPIFY_* settings
    mapping.py   a GraphQL order node or a webhook's order payload -> upsert_order arguments
    admin.py     the Admin GraphQL API client: cursor paging under the cost-based throttle
    sync.py      `crm-mcp shopify sync`: the backfill, resumable from a checkpoint file
    webhooks.py  `crm-mcp bridge shopify`: POST /shopify/webhooks, HMAC-checked, deduplicated"""
