"""Placeholder replaced below."""
async def load_demo(crm):  # pragma: no cover
    return {}
