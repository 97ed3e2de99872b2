"""The embedder's JSON logs: one object per line, the same shape as the gateway's.

``{"ts", "level", "logger", "msg"}`` plus ``exc`` with a traceback. Kept apart
from the gateway's formatter so the embedder never imports the gateway. Input
texts are never logged.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # built once, not per line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger (uvicorn's too: start it with log_config=None)."""
    # Progress bars (transformers' "Loading weights") are not log lines and would break
    # the one-object-per-line stream; set before transformers is imported (at model load).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("httpx", "httpx2", "httpcore", "urllib3", "filelock"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
