"""Logging set-up: readable text for a person, or one JSON object per line for machines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

from service.redaction import redact_sensitive, redact_sensitive_in_string

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
            payload["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        return _encoder.encode(payload).decode()


class RedactingFilter(logging.Filter):
    """Redact every line on its way out (service/redaction.py), whoever logged it: call
    sites redact what they quote already, this catches what they (or a library) did not."""

    def __init__(self, extra_keys: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.extra_keys = extra_keys

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_sensitive_in_string(message, self.extra_keys)
        if redacted is not message or record.args:
            record.msg, record.args = redacted, None
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, redact_sensitive(value, self.extra_keys))
        if record.exc_info and not record.exc_text:
            # A traceback ends with the exception's message, which may quote a value.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_sensitive_in_string(text, self.extra_keys)
        return True


def configure(
    *, log_format: str = "text", level: str = "INFO", extra_keys: frozenset[str] = frozenset()
) -> None:
    """Send every auditq, arq and aiohttp log line to stderr in the chosen format, redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(extra_keys))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
