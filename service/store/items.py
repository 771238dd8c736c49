"""A stored row as an item: the event's wire shape plus `received_at` and `received_via`.

The API returns it, and the transparency log's leaf of a row is its canonical JSON, so both
take it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

# Reading rows. `ip` is read as text: asyncpg's inet type would need its own encoding.
ITEM_COLUMNS = """id, ts, received_at, action, category, severity, outcome,
       actor_id, actor_type, actor_name, actor_email,
       entity_type, entity_id, entity_name, tenant,
       request_id, host(ip) AS ip, user_agent, method, path, status, duration_ms,
       changes, metadata, presentation, source, received_via"""
# The same, with the JSON columns as text (the log's fast canonical path decodes them).
ITEM_COLUMNS_JSON_TEXT = ITEM_COLUMNS.replace(
    "changes, metadata, presentation,",
    "changes::text AS changes, metadata::text AS metadata, presentation::text AS presentation,",
)


def _present(**fields: Any) -> dict[str, Any] | None:
    kept = {name: value for name, value in fields.items() if value is not None}
    return kept or None


def item(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """One stored event in the wire format's shape, plus `received_at`."""
    actor = None
    if row["actor_id"] is not None:
        actor = _present(
            id=row["actor_id"],
            type=row["actor_type"],
            name=row["actor_name"],
            email=row["actor_email"],
        )
    entity = None
    if row["entity_type"] is not None or row["entity_id"] is not None:
        entity = _present(type=row["entity_type"], id=row["entity_id"], name=row["entity_name"])
    return {
        "id": row["id"],
        "ts": row["ts"],
        "action": row["action"],
        "category": row["category"],
        "severity": row["severity"],
        "outcome": row["outcome"],
        "actor": actor,
        "entity": entity,
        "tenant": row["tenant"],
        "request": _present(
            id=row["request_id"],
            ip=row["ip"],
            user_agent=row["user_agent"],
            method=row["method"],
            path=row["path"],
            status=row["status"],
            duration_ms=row["duration_ms"],
        ),
        "changes": row["changes"],
        "metadata": row["metadata"],
        "presentation": row["presentation"],
        "source": row["source"],
        "received_at": row["received_at"],
        "received_via": row["received_via"],
    }
