"""Leaves of the transparency log: a row or a store action as RFC 8785 canonical JSON.

A row's leaf data is the canonical JSON of {"kind": "row", "item": ITEM} with ITEM the
JSON `GET /api/v1/admin/audit-logs/{id}` returns; an action's is {"kind": "action", ...}
(docs/integrity.md, "Leaves"). RFC 8785 numbers are IEEE-754 doubles: an integer beyond
±(2**53 - 1) is canonicalised as the double it parses to, as every JSON reader that follows
I-JSON (RFC 7493) reads it.
"""

from __future__ import annotations

import functools
import math
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


def es6_number(value: float) -> str:
    """A double as ECMAScript's Number::toString writes it (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError("JSON has no NaN or infinity")
    if value == 0:
        return "0"
    text = repr(value)
    if "e" not in text:  # 1e-4 <= |value| < 1e16: Python and ECMAScript write it alike
        return text[:-2] if text.endswith(".0") else text
    text = repr(abs(value))  # Python's repr is the shortest round-trip digits, as ES6's
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    stripped = digits.rstrip("0")
    k = len(stripped)
    n = int(exp_text or 0) - len(fraction) + (len(digits) - k) + k  # value = 0.DIGITS x 10^n
    sign = "-" if value < 0 else ""
    if k <= n <= 21:
        return sign + stripped + "0" * (n - k)
    if 0 < n <= 21:
        return sign + stripped[:n] + "." + stripped[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + stripped
    e = n - 1
    head = stripped if k == 1 else stripped[0] + "." + stripped[1:]
    return f"{sign}{head}e{'+' if e > 0 else '-'}{abs(e)}"


@functools.lru_cache(maxsize=65536)
def _raw_float(text: str) -> msgspec.Raw:
    return msgspec.Raw(es6_number(float(text)).encode())


# The fast path (about 4 µs a row against rfc8785's 120): msgspec writes keys sorted by code
# point and strings as RFC 8785 does; floats go in as raw ES6 numbers. Keys or values outside
# the Basic Multilingual Plane (UTF-16 sorts them differently) and runs of 16 digits or more
# (an integer past 2**53 becomes a double) take the reference path instead.
_sorted_encode = msgspec.json.Encoder(order="sorted").encode
decode_jsonb = msgspec.json.Decoder(float_hook=_raw_float).decode
_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_SIXTEEN_DIGITS = b"0" * 16
_NON_BMP_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 of U+10000 and up


def _needs_reference(data: bytes) -> bool:
    """Whether the fast form may differ from RFC 8785's (a scan in C, no regex)."""
    if not data.isascii() and any(lead in data for lead in _NON_BMP_LEADS):
        return True
    return _SIXTEEN_DIGITS in data.translate(_DIGIT_MAP)


def raw_float(value: float | None) -> msgspec.Raw | None:
    """A float column's value as its RFC 8785 number, for `fast_row_leaf`."""
    return None if value is None else msgspec.Raw(es6_number(value).encode())


def fast_row_leaf(item_raw: dict[str, Any]) -> bytes | None:
    """The leaf data of a row whose JSON columns were read with `decode_jsonb` and floats
    made raw (`raw_float`); None when the reference path must decide."""
    data = _sorted_encode({"kind": "row", "item": item_raw})
    return None if _needs_reference(data) else data
