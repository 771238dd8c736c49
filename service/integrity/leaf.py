"""Leaves of the transparency log: a row or a store action as RFC 8785 canonical JSON.

A row's leaf data is the canonical JSON of {"kind": "row", "item": ITEM} with ITEM the
JSON `GET /api/v1/admin/audit-logs/{id}` returns; an action's is {"kind": "action", ...}
(docs/integrity.md, "Leaves"). RFC 8785 numbers are IEEE-754 doubles: an integer beyond
±(2**53 - 1) is canonicalised as the double it parses to, as every JSON reader that follows
I-JSON (RFC 7493) reads it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import rfc8785

from service.integrity.merkle import leaf_hash

_SAFE = (1 << 53) - 1
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def as_json(value: Any) -> Any:
    """The JSON value of `value` as the API writes it (UUIDs, times as msgspec encodes them)."""
    return _decode(_encode(value))


def _i_json(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if -_SAFE <= value <= _SAFE else float(value)
    if isinstance(value, dict):
        return {k: _i_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_i_json(v) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of a JSON value (integers past 2**53 as doubles)."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        return rfc8785.dumps(_i_json(value))


def row_leaf(item_json: dict[str, Any]) -> bytes:
    """The leaf data of a row, from its item as JSON (`as_json(item(row))`)."""
    return canonical({"kind": "row", "item": item_json})


def action_leaf(action_json: dict[str, Any]) -> bytes:
    """The leaf data of a store action, from its fields as JSON (docs/integrity.md)."""
    return canonical({"kind": "action", **action_json})


def row_leaf_hash(item_json: dict[str, Any]) -> bytes:
    return leaf_hash(row_leaf(item_json))
