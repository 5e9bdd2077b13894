"""Placeholder until resources land."""


def register(server, crm):  # noqa: ANN001
    return None
