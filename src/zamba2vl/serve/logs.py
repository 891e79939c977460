"""Structured logs: one JSON object per line, one line per chat request (id, tokens in/out, time to first token,
total time, status), plus the server's own start-up and error lines in the same shape."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

log = logging.getLogger("zamba2vl.serve")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, Any] = {"ts": when.isoformat(timespec="milliseconds"), "level": record.levelname.lower()}
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def log_request(**fields: Any) -> None:
    """The one line of a finished request; floats are rounded to the millisecond."""
    fields = {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}
    log.info("request", extra={"fields": {"event": "request", **fields}})


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the server's logger (uvicorn's own lines keep their format)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
