"""Structured JSON logs, one object per line, with the request id when there is one.

Message content and keys are never logged: the code logs ids, names, counts
and error types only. Structured fields ride on a record through ``extra=``;
only the names in ``FIELDS`` are written, so nothing else passed that way
(a body, a header) can reach the output by accident.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from gateway.observability import request_id_var
from gateway.urls import redact_text

# Record attributes written out when present (set with ``logger.info(..., extra={...})``).
FIELDS = ("method", "route", "status", "duration_ms")
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # built once, not per line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            # Error messages quote URLs, and a URL may carry a key (``?api-key=``).
            "msg": redact_text(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        attributes = record.__dict__
        for name in FIELDS:
            if name in attributes:
                entry[name] = attributes[name]
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        return _ENCODER.encode(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HTTP clients log every request (with its URL) at INFO: too chatty for the hot path.
    for chatty in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
