"""ArcSight CEF (revision 0, "Implementing ArcSight CEF" v25): an item as one CEF line."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

VENDOR, PRODUCT, VERSION = "auditq", "auditq", "1"
_SEVERITY = {"info": 1, "notice": 3, "warning": 6, "critical": 10}


def _header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _ext(value: object) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def to_cef(item: Mapping[str, Any], *, whole: Any = None) -> str:
    """The CEF line of a stored item (as read, or as item JSON decodes it); the full item
    rides in `cs6` (`whole`: its JSON, when the caller has it already)."""
    actor = item.get("actor") or {}
    entity = item.get("entity") or {}
    request = item.get("request") or {}
    ts = item["ts"]
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    fields: list[tuple[str, object]] = [
        ("rt", int(when.timestamp() * 1000)),
        ("externalId", str(item["id"])),
        ("act", item["action"]),
        ("cat", item.get("category")),
        ("outcome", item.get("outcome")),
        ("suser", actor.get("name") or actor.get("id")),
        ("suid", actor.get("id")),
        ("src", request.get("ip")),
        ("requestMethod", request.get("method")),
        ("request", request.get("path")),
        ("requestClientApplication", request.get("user_agent")),
        ("cs1Label", "tenant" if item.get("tenant") else None),
        ("cs1", item.get("tenant")),
        ("cs2Label", "entity" if entity else None),
        ("cs2", f"{entity.get('type')}:{entity.get('id')}" if entity else None),
        ("cs3Label", "source" if item.get("source") else None),
        ("cs3", item.get("source")),
        ("cs6Label", "item"),
        ("cs6", dict(item) if whole is None else whole),
    ]
    extension = " ".join(f"{key}={_ext(value)}" for key, value in fields if value is not None)
    header = "|".join(
        _header(part)
        for part in (
            "CEF:0",
            VENDOR,
            PRODUCT,
            VERSION,
            item["action"],
            item["action"],
            str(_SEVERITY.get(item.get("severity", "info"), 1)),
        )
    )
    return f"{header}|{extension}"
