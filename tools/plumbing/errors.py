"""Two kinds of failure, kept apart as sentry-mcp does.

UserError: the caller can fix it (bad id, illegal transition, invalid phone). The message says
what was wrong, the valid values, and which tool finds the right id. Nothing was changed.

Anything else is ours to fix: the client sees a short generic message and the server logs the
traceback. Raw database errors never reach the client."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError


class UserError(ToolError):
    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message} {hint}".strip() if hint else message)


class InvalidArguments(UserError):
    """The arguments do not fit the tool's input model (the one validation, ToolSpec.run)."""


class NotFound(UserError):
    pass


class Conflict(UserError):
    pass


class Unavailable(ToolError):
    """The database is unreachable or busy: retryable, nothing was changed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "The CRM database is temporarily unavailable; nothing was changed. "
            "Retry the same call in a few seconds (calls are safe to retry)." + (f" ({detail})" if detail else "")
        )
