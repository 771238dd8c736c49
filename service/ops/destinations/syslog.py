"""RFC 5424 syslog messages with RFC 6587 octet-counted framing.

Written by hand: the standard library's SysLogHandler speaks RFC 3164 with non-transparent
(newline) framing, which a JSON or CEF body with a newline in it would break, and no
maintained asyncio library frames RFC 5424 by octet counting over TLS. The framing is one
line of code: the message's byte length, a space, the message.
"""

from __future__ import annotations

import re
from datetime import UTC

from service.ops.destinations.formats import Item

FACILITY = 13  # "log audit" (RFC 5424 table 1)
_SEVERITY = {"info": 6, "notice": 5, "warning": 4, "critical": 2}
SD_ID = "auditq@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _field(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII, no space, at most `limit` characters, or `-`."""
    cleaned = _PRINTABLE.sub("_", value or "")[:limit]
    return cleaned or "-"


def _param(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def message(item: Item, body: str, *, hostname: str, app_name: str) -> bytes:
    """The RFC 5424 message of one item: event id and action in structured data."""
    pri = FACILITY * 8 + _SEVERITY.get(item.severity, 6)
    stamp = item.ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    sd = f'[{SD_ID} id="{_param(item.id)}" action="{_param(item.action)}"]'
    header = (
        f"<{pri}>1 {stamp} {_field(hostname, 255)} {_field(app_name, 48)} - "
        f"{_field(item.action, 32)} {sd} "
    )
    return header.encode() + body.encode()


def frame(msg: bytes) -> bytes:
    """Octet-counted framing (RFC 6587 §3.4.1, RFC 5425 §4.3): length, space, message."""
    return b"%d %s" % (len(msg), msg)
