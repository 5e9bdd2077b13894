"""Structured logs: one JSON object per line on stderr. Bridges log ids (message, ticket,
conversation) and outcomes only; names, addresses and message text never reach a log line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, FIELDS, {}) or {})
        if record.exc_info and record.levelno >= logging.ERROR:
            # Our own failures: the traceback names code, not customers (locals are not printed).
            doc["error"] = repr(record.exc_info[1])
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `name` with id fields; None values are left out."""
    log.log(level, name, extra={FIELDS: {k: v for k, v in fields.items() if v is not None}})


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request lines carry client addresses and status-page tokens: not logged.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpx2", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
