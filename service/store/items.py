"""Stored rows as items: the columns read, a WHERE built from the §7 filters, a row as an item.

Below the API so the destinations' runners in the worker build the same filters and items
as the audit-log routes (service/store/pages.py reads them for the API), and the
transparency log's leaf of a row is the canonical JSON of its item."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg


class Filters(Protocol):
    """The §7 filters, as the audit-log query model and a destination's filter hold them."""

    @property
    def action(self) -> str | Sequence[str] | None: ...
    @property
    def action_prefix(self) -> str | None: ...
    @property
    def category(self) -> str | None: ...
    @property
    def severity(self) -> str | Sequence[str] | None: ...
    @property
    def outcome(self) -> str | None: ...
    @property
    def actor_id(self) -> str | Sequence[str] | None: ...
    @property
    def entity_type(self) -> str | Sequence[str] | None: ...
    @property
    def entity_id(self) -> str | None: ...
    @property
    def tenant(self) -> str | Sequence[str] | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def since(self) -> datetime | None: ...
    @property
    def until(self) -> datetime | None: ...
    @property
    def q(self) -> str | None: ...


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
SELECT_ITEMS = f"""
SELECT {ITEM_COLUMNS}
FROM audit_log
"""
SELECT_ONE = SELECT_ITEMS + "WHERE id = $1 LIMIT 1"
SELECT_CURSOR_SECRET = "SELECT secret FROM api_secret WHERE name = 'cursor'"

# WHERE fragments: `{}` becomes a `$n` placeholder; only these fixed strings and parameter
# numbers ever go into the SQL text, values always travel as parameters.
IS = "{column} = {{}}"
IS_ANY = "{column} = ANY({{}}::text[])"
ACTION_PREFIX = "starts_with(action, {})"
IP_WITHIN = "ip <<= {}::inet"
SINCE = "ts >= {}"
UNTIL = "ts <= {}"
FULL_TEXT = "search @@ plainto_tsquery('simple', {})"
# Inside payloads: a metadata value by its (dotted) path, as text; a field named in changes.
METADATA_IS = "metadata #>> {}::text[] = {}"
# The same with containment first, which the GIN index (jsonb_path_ops) serves: the value is
# the one text of the stored string or the JSON scalar written so ("5": the string or 5).
METADATA_CONTAINS = "metadata @> ANY({}::text[]::jsonb[]) AND metadata #>> {}::text[] = {}"
METADATA_HAS = "metadata #> {}::text[] IS NOT NULL"
CHANGES_TOUCH = (
    "changes @> ANY(SELECT jsonb_build_array(jsonb_build_object('field', f))"
    " FROM unnest({}::text[]) AS f)"
)
# An actor's name by its prefix, any case: a range of audit_log_actor_name_idx (byte-wise:
# every text starting with p lies in [p, p || U+10FFFF]), then the exact test.
ACTOR_NAME_PREFIX = (
    'lower(actor_name) COLLATE "C" >= lower({0}) COLLATE "C"'
    ' AND lower(actor_name) COLLATE "C" <= (lower({0}) || U&\'\\+10FFFF\') COLLATE "C"'
    " AND starts_with(lower(actor_name), lower({0}))"
)
# Keyset: the redundant bound on ts alone lets PostgreSQL prune partitions.
AFTER_DESC = "ts <= {0} AND (ts, id) < ({0}, {1})"
AFTER_ASC = "ts >= {0} AND (ts, id) > ({0}, {1})"
ORDER_BY = {"desc": "ORDER BY ts DESC, id DESC", "asc": "ORDER BY ts ASC, id ASC"}

COLUMN_FILTERS = ("category", "outcome", "entity_id", "request_id")
# PostgreSQL text holds no NUL (it refuses one as a parameter): a value with one matches no row.
NO_ROW = "false"


def holds_nul(value: object) -> bool:
    """Whether `value` is text with a NUL in it."""
    return isinstance(value, str) and "\x00" in value


class Where:
    """A conjunction of fixed fragments and the parameters their placeholders number."""

    def __init__(self, args: Sequence[Any] = ()) -> None:
        self.fragments: list[str] = []
        self.args: list[Any] = list(args)  # parameters placed before the filters' own

    def add(self, fragment: str, *values: Any) -> None:
        if any(holds_nul(value) for value in values):
            self.fragments.append(NO_ROW)
            return
        numbers = [f"${len(self.args) + i}" for i in range(1, len(values) + 1)]
        self.fragments.append(fragment.format(*numbers))
        self.args.extend(values)

    def add_in(self, column: str, values: Sequence[str]) -> None:
        values = [value for value in values if not holds_nul(value)]
        if not values:
            self.fragments.append(NO_ROW)
        # One value as `=`: the plain form lets the planner walk a (column, ts) index in order.
        elif len(values) == 1:
            self.add(IS.format(column=column), values[0])
        else:
            self.add(IS_ANY.format(column=column), list(values))

    def condition(self) -> str:
        return " AND ".join(self.fragments) or "true"

    def sql(self) -> str:
        return "WHERE " + self.condition()


def _values(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def where_of(query: Filters, *, args: Sequence[Any] = ()) -> Where:
    """The WHERE of `query`; its placeholders are numbered after `args`."""
    where = Where(args)
    for name in ("action", "actor_id", "entity_type", "tenant", "severity"):
        values = _values(getattr(query, name))
        if values:
            where.add_in(name, values)
    for name in COLUMN_FILTERS:
        value = getattr(query, name)
        if value is not None:
            where.add(IS.format(column=name), value)
    if query.action_prefix is not None:
        where.add(ACTION_PREFIX, query.action_prefix)
    if query.ip is not None:
        where.add(IP_WITHIN, query.ip)
    if query.since is not None:
        where.add(SINCE, query.since)
    if query.until is not None:
        where.add(UNTIL, query.until)
    if query.q is not None:
        where.add(FULL_TEXT, query.q)
    _inside_payloads(where, query)
    return where


def _inside_payloads(where: Where, query: Filters) -> None:
    """The metadata and changes filters (the audit-log routes have them; a destination not)."""
    actor_name = getattr(query, "actor_name", None)
    if actor_name is not None:
        where.add(ACTOR_NAME_PREFIX, actor_name)
    for match in _values(getattr(query, "metadata", None)):
        key, sep, value = match.partition("=")
        path = key.split(".")
        if holds_nul(key):
            where.fragments.append(NO_ROW)
        elif sep and not any(_may_index_array(part) for part in path):
            where.add(METADATA_CONTAINS, _containing(path, value), path, value)
        elif sep:  # a step may index an array (`tags.0`): containment cannot say that
            where.add(METADATA_IS, path, value)
        else:  # `key` alone: the key is there, whatever its value
            where.add(METADATA_HAS, path)
    change_field = getattr(query, "change_field", None)
    if change_field is not None:
        fields = [f for f in _values(change_field) if not holds_nul(f)]
        # One `[{"field": f}]` per name: jsonb containment finds it in any element of changes.
        where.add(CHANGES_TOUCH, fields)


def _may_index_array(step: str) -> bool:
    """Whether `#>>` may read `step` as an array index (an integer, maybe negative)."""
    try:
        int(step)
    except ValueError:
        return False
    return True


def _containing(path: Sequence[str], value: str) -> list[str]:
    """JSON documents one of which metadata contains when `metadata #>> path = value`: the
    value as a string, and as the JSON it spells (`5`, `true`, an object) if it is JSON."""
    documents = []
    for scalar in (value, _json_or_none(value)):
        if scalar is None:
            continue
        document: Any = scalar
        for step in reversed(path):
            document = {step: document}
        documents.append(json.dumps(document, allow_nan=False))
    return documents


def _json_or_none(text: str) -> Any:
    """`text` read as JSON; None when it is not JSON, is null, or is NaN or infinite."""
    try:
        parsed = json.loads(text)
        written = json.dumps(parsed, allow_nan=False)
    except ValueError:
        return None
    return None if "\\u0000" in written else parsed  # jsonb holds no NUL


def _present(fields: dict[str, Any]) -> dict[str, Any] | None:
    kept = {name: value for name, value in fields.items() if value is not None}
    return kept or None


def item(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """One stored event in the wire format's shape, plus `received_at`."""
    actor = None
    if row["actor_id"] is not None:
        actor = _present(
            {
                "id": row["actor_id"],
                "type": row["actor_type"],
                "name": row["actor_name"],
                "email": row["actor_email"],
            }
        )
    entity = None
    if row["entity_type"] is not None or row["entity_id"] is not None:
        entity = _present(
            {"type": row["entity_type"], "id": row["entity_id"], "name": row["entity_name"]}
        )
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
            {
                "id": row["request_id"],
                "ip": row["ip"],
                "user_agent": row["user_agent"],
                "method": row["method"],
                "path": row["path"],
                "status": row["status"],
                "duration_ms": row["duration_ms"],
            }
        ),
        "changes": row["changes"],
        "metadata": row["metadata"],
        "presentation": row["presentation"],
        "source": row["source"],
        "received_at": row["received_at"],
        "received_via": row["received_via"],
    }
