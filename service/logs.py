"""Logging set-up: readable text for a person, or one JSON object per line for machines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

_encoder = msgspec.json.Encoder(enc_hook=str)  # an `extra=` value of any type still logs
# Attributes every LogRecord has; anything else came in through `extra=` and is kept.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


# Control characters (and the line and paragraph separators) a caller can put in a path or
# header: raw in a text log they forge lines or drive a terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x85: "\\x85"}
_CONTROL |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
del _CONTROL[ord("\t")]


class TextFormatter(logging.Formatter):
    """One line a record: control characters in the message are escaped, never raw."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_CONTROL)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object; the message (and its stable prefix) stays intact."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return _encoder.encode(payload).decode()


def configure(*, log_format: str = "text", level: str = "INFO") -> None:
    """Send every auditq, arq and aiohttp log line to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
