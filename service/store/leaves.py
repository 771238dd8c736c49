"""A stored row's leaf data, built fast from the columns the log's queries read.

The leaf is the RFC 8785 canonical JSON of {"kind": "row", "item": ITEM} (docs/integrity.md,
"Leaves"), ITEM as `item()` shapes it. The fast path writes it with msgspec in one call:
structs of the item's parts (keys sorted by the encoder, absent parts left out as `item()`
leaves them), the JSON columns decoded from their text with floats as raw ES6 numbers. A
leaf the fast form may write differently (characters outside the Basic Multilingual Plane,
an integer past 2**53) takes the reference path (rfc8785 of `item()`): the two are the same
bytes, which tests/integrity/test_leaf.py checks on random rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from service.integrity.canonical import ROW_COLUMNS
from service.integrity.leaf import as_json, decode_jsonb, es6_number, row_leaf
from service.store.items import ITEM_COLUMNS_JSON_TEXT, item

# The columns of a row's leaf, in the order the queries below read them.
LEAF_COLUMNS = f"seq, {ITEM_COLUMNS_JSON_TEXT}"
# Their names: a row's columns in the canonical record's order.
LEAF_COLUMN_NAMES = ROW_COLUMNS
_JSON_COLUMNS = ("changes", "metadata", "presentation")


class _Actor(msgspec.Struct, omit_defaults=True):
    id: Any = None
    type: Any = None
    name: Any = None
    email: Any = None


class _Entity(msgspec.Struct, omit_defaults=True):
    type: Any = None
    id: Any = None
    name: Any = None


class _Request(msgspec.Struct, omit_defaults=True):
    id: Any = None
    ip: Any = None
    user_agent: Any = None
    method: Any = None
    path: Any = None
    status: Any = None
    duration_ms: Any = None


class _Item(msgspec.Struct):
    """Every key of an item, null included (the encoder sorts them)."""

    id: Any
    ts: Any
    action: Any
    category: Any
    severity: Any
    outcome: Any
    actor: Any
    entity: Any
    tenant: Any
    request: Any
    changes: Any
    metadata: Any
    presentation: Any
    source: Any
    received_at: Any
    received_via: Any


_encode = msgspec.json.Encoder(order="sorted").encode
_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_SIXTEEN_DIGITS = b"0" * 16
_NON_BMP_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 of U+10000 and up


@functools.lru_cache(maxsize=65536)
def _raw_float(value: float) -> msgspec.Raw:
    return msgspec.Raw(es6_number(value).encode())


def _json(text: str | None) -> Any:
    return None if text is None else decode_jsonb(text)


def row_leaf_data(row: asyncpg.Record | Sequence[Any]) -> bytes:
    """A row's leaf data, from its LEAF_COLUMNS (an asyncpg record or a tuple)."""
    (_seq, id_, ts, received_at, action, category, severity, outcome,
     actor_id, actor_type, actor_name, actor_email, entity_type, entity_id, entity_name, tenant,
     request_id, ip, user_agent, method, path, status, duration_ms,
     changes, metadata, presentation, source, received_via) = row  # fmt: skip
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
        request = _Request(request_id, ip, user_agent, method, path, status, duration)
    actor = None if actor_id is None else _Actor(actor_id, actor_type, actor_name, actor_email)
    entity = None
    if entity_type is not None or entity_id is not None:
        entity = _Entity(entity_type, entity_id, entity_name)
    value = _Item(
        id_, ts, action, category, severity, outcome, actor, entity, tenant, request,
        _json(changes), _json(metadata), _json(presentation), source, received_at, received_via,
    )  # fmt: skip
    data = b'{"item":' + _encode(value) + b',"kind":"row"}'
    if _needs_reference(data):
        return _reference(row)
    return data


def _needs_reference(data: bytes) -> bool:
    """Whether the fast form may differ from RFC 8785's (a scan in C, no regex)."""
    if not data.isascii() and any(lead in data for lead in _NON_BMP_LEADS):
        return True
    return _SIXTEEN_DIGITS in data.translate(_DIGIT_MAP)


def _reference(row: asyncpg.Record | Sequence[Any]) -> bytes:
    """The leaf data by the reference path: rfc8785 of the item as the API writes it."""
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return row_leaf(as_json(item(values)))
