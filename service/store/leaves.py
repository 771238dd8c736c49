"""A stored row's leaf data, built fast from the columns the log's queries read.

The leaf is the RFC 8785 canonical JSON of {"kind": "row", "item": ITEM} (docs/integrity.md,
"Leaves"), ITEM as `item()` shapes it. The fast path writes it with msgspec in one call:
structs of the item's parts (keys sorted by the encoder, absent parts left out as `item()`
leaves them), the JSON columns decoded from their text with floats as raw ES6 numbers. A
leaf the fast form may write differently (JSON columns with characters outside the Basic
Multilingual Plane or an integer past 2**53) takes the reference path (rfc8785 of
`item()`): the two are the same bytes, which tests/integrity/test_leaf.py checks on random
rows.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from service.integrity.canonical import ROW_COLUMNS
from service.integrity.leaf import as_json, es6_number, row_leaf
from service.integrity.leaf import decode_jsonb as _decode
from service.store.items import ITEM_COLUMNS_JSON_TEXT, item

# The columns of a row's leaf, in the order the queries below read them.
LEAF_COLUMNS = f"seq, {ITEM_COLUMNS_JSON_TEXT}"
# Their names: a row's columns in the canonical record's order.
LEAF_COLUMN_NAMES = ROW_COLUMNS
# The same with the two times as text in UTC, as PostgreSQL writes a timestamp with
# DateStyle ISO, "T" for the space and "Z" after ("2026-01-02T03:04:05.67Z"): a tenth of
# the client's cost of decoding them as datetimes (the verifier's connections set the
# DateStyle; `row_leaf_data` takes both).
LEAF_COLUMNS_TEXT_TIMES = LEAF_COLUMNS.replace(
    "id, ts, received_at,",
    "id, replace((ts AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z' AS ts, "
    "replace((received_at AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z' AS received_at,",
)
DATESTYLE = "SET DateStyle = 'ISO, YMD'"
# The verifier's connections: built-in functions, operators and casts only (the rows' table
# is named with its schema), whatever the role's or database's search_path says.
SEARCH_PATH = "SET search_path = pg_catalog, pg_temp"


def rows_by_seq_ranges(columns: str, ranges: str = "$1::text", *, ordered: bool = True) -> str:
    """The query of `columns` of the rows whose seqs are in `ranges` (an int8multirange as
    text: $1, or a literal), in seq order: by ranges of the seq index (a `seq <@ multirange`
    filter would scan every partition). The table is named with its schema: the verifier's
    connections search pg_catalog alone, so no function of another schema can stand in for
    a built-in one. `ordered=False`: in whatever order the partitions give them (the caller
    sorts them)."""
    return f"""
SELECT a.* FROM unnest({ranges}::int8multirange) AS r
CROSS JOIN LATERAL (
    SELECT {columns} FROM public.audit_log
    WHERE seq >= lower(r) AND seq < upper(r){" ORDER BY seq" if ordered else ""}
) a
"""


# The leaf columns of the rows of an int8multirange of seqs ($1, as text), in seq order: the
# sealer's read of new rows, and of the rows the compiled path leaves to Python.
LEAF_ROWS = rows_by_seq_ranges(LEAF_COLUMNS)

_JSON_COLUMNS = ("changes", "metadata", "presentation")


# The item's parts, their fields in sorted order: the encoder writes a struct's fields in
# the order they are declared ("deterministic"), which spares it sorting them on every row
# (a third of the encoding); dicts (the JSON columns) it still sorts.
class _Actor(msgspec.Struct, omit_defaults=True):
    email: Any = None
    id: Any = None
    name: Any = None
    type: Any = None


class _Entity(msgspec.Struct, omit_defaults=True):
    id: Any = None
    name: Any = None
    type: Any = None


class _Request(msgspec.Struct, omit_defaults=True):
    duration_ms: Any = None
    id: Any = None
    ip: Any = None
    method: Any = None
    path: Any = None
    status: Any = None
    user_agent: Any = None


class _Item(msgspec.Struct):
    """Every key of an item, null included."""

    action: Any
    actor: Any
    category: Any
    changes: Any
    entity: Any
    id: Any
    metadata: Any
    outcome: Any
    presentation: Any
    received_at: Any
    received_via: Any
    request: Any
    severity: Any
    source: Any
    tenant: Any
    ts: Any


class _RowLeaf(msgspec.Struct):
    item: _Item
    kind: str = "row"


_encode = msgspec.json.Encoder(order="deterministic").encode
_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_SIXTEEN_DIGITS = b"0" * 16
_ESCAPED_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB]")
_NON_BMP_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 of U+10000 and up


@functools.lru_cache(maxsize=65536)
def _raw_float(value: float) -> msgspec.Raw:
    return msgspec.Raw(es6_number(value).encode())


def row_leaf_data(row: asyncpg.Record | Sequence[Any]) -> bytes:
    """A row's leaf data, from its LEAF_COLUMNS (an asyncpg record or a tuple)."""
    (_seq, id_, ts, received_at, action, category, severity, outcome,
     actor_id, actor_type, actor_name, actor_email, entity_type, entity_id, entity_name, tenant,
     request_id, ip, user_agent, method, path, status, duration_ms,
     changes, metadata, presentation, source, received_via) = row  # fmt: skip
    if ts.__class__ is str and not (
        len(ts) == 27 and received_at.__class__ is str and len(received_at) == 27
    ):  # both of 27 characters are the API's form already (the usual case: no call)
        ts, received_at = _utc_text(ts), _utc_text(received_at)
    if _needs_reference(f"{changes or ''}{metadata or ''}{presentation or ''}"):
        return _reference(row, ts, received_at)
    request = None
    if not (
        request_id is None
        and ip is None
        and user_agent is None
        and method is None
        and path is None
        and status is None
        and duration_ms is None
    ):
        duration = None if duration_ms is None else _raw_float(duration_ms)
        request = _Request(duration, request_id, ip, method, path, status, user_agent)
    value = _Item(
        action,
        None if actor_id is None else _Actor(actor_email, actor_id, actor_name, actor_type),
        category,
        None if changes is None else _decode(changes),
        None if entity_type is None and entity_id is None
        else _Entity(entity_id, entity_name, entity_type),
        id_,
        None if metadata is None else _decode(metadata),
        outcome,
        None if presentation is None else _decode(presentation),
        received_at, received_via, request, severity, source, tenant, ts,
    )  # fmt: skip
    return _encode(_RowLeaf(value))


def _needs_reference(json_text: str) -> bool:
    """Whether the fast form may differ from RFC 8785's, from the JSON columns' text (a scan
    in C, no regex): a key outside the Basic Multilingual Plane (UTF-16 sorts it apart from
    code points), an integer of 16 digits or more (RFC 8785 writes one past 2**53 as a
    double). Only the JSON columns hold keys or numbers that are not the item's own: its
    strings are written alike whatever they hold, its numbers (status, an int4, and
    duration_ms, written as ES6 does) alike too."""
    data = json_text.encode()
    if not json_text.isascii() and any(lead in data for lead in _NON_BMP_LEADS):
        return True  # (str.isascii reads a flag; bytes.isascii would scan)
    if b"\\u" in data and _ESCAPED_HIGH_SURROGATE.search(data):
        return True  # PostgreSQL writes them as UTF-8, but text may spell them escaped
    return _SIXTEEN_DIGITS in data.translate(_DIGIT_MAP)


def _utc_text(text: str | None) -> str | None:
    """A time of LEAF_COLUMNS_TEXT_TIMES in the API's form: ISO 8601 in UTC, microseconds
    (6 digits) when there are any, "Z". PostgreSQL leaves out a fraction's trailing zeros.
    Any other text (BC, infinity, a year past 9999: no item can hold one) is left as it
    is, so its leaf is no row's sealed leaf: a finding."""
    if text is None:
        return None
    n = len(text)
    if n == 27 or n == 20:  # "YYYY-MM-DDTHH:MM:SS.ffffffZ", "YYYY-MM-DDTHH:MM:SSZ"
        return text
    if 22 <= n <= 26 and text[19] == ".":
        return f"{text[:-1]}{'000000'[n - 21 :]}Z"
    return text


def _reference(row: asyncpg.Record | Sequence[Any], ts: Any, received_at: Any) -> bytes:
    """The leaf data by the reference path: rfc8785 of the item as the API writes it."""
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    values["ts"], values["received_at"] = ts, received_at
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return row_leaf(as_json(item(values)))
