"""The C path of the verifier's row check (service/store/_copyleaf.c): a row's leaf written
from its binary COPY tuple is RFC 8785 of its item, or the C says it is unsure."""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from service.integrity.leaf import _i_json, as_json
from service.store import copyleaf
from service.store.items import item
from service.store.leaves import LEAF_COLUMN_NAMES

pytestmark = pytest.mark.skipif(
    not copyleaf.available(), reason="service.store._copyleaf was not compiled"
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1)
    | st.sampled_from([2**53 - 1, 2**53 + 1, 10**15, 10**16 - 1, 10**16 + 1, -(10**17) - 3])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e9, max_value=1e9)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
TEXT = st.none() | st.text(max_size=12)
TIME = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)  # fmt: skip
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _written_alike(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether Python writes the address as PostgreSQL's host() does: all but the IPv6
    addresses host() ends in dotted IPv4 (::a.b.c.d, ::ffff:a.b.c.d; the test through
    PostgreSQL checks those)."""
    if address.version == 4:
        return True
    words = [int(address) >> (112 - 16 * i) & 0xFFFF for i in range(8)]
    mapped = words[:5] == [0] * 5 and words[5] == 0xFFFF
    compatible = words[:6] == [0] * 6 and words[6] != 0
    return not (mapped or compatible)


IP = st.none() | st.ip_addresses().filter(_written_alike).map(str)


def _pg_json(value: Any, ascii_only: bool) -> str:
    """JSON text in PostgreSQL's jsonb output shape: keys by length then bytes, ", ", ": "."""

    def order(v: Any) -> Any:
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
            return {k: order(v[k]) for k in keys}
        if isinstance(v, list):
            return [order(x) for x in v]
        return v

    return json.dumps(order(value), ensure_ascii=ascii_only)


def copy_tuple(row: tuple[Any, ...]) -> bytes:
    """A row of the leaf's columns as PostgreSQL's binary COPY writes it (copyleaf.COPY_COLUMNS:
    int8, uuid, two timestamptz, text …, int4, float8, three jsonb as version 1 + text, text)."""
    out = [struct.pack(">h", len(row))]
    for name, value in zip(LEAF_COLUMN_NAMES, row, strict=True):
        if value is None:
            out.append(struct.pack(">i", -1))
            continue
        if name == "seq":
            data = struct.pack(">q", value)
        elif name == "id":
            data = value.bytes
        elif name in ("ts", "received_at"):
            data = struct.pack(">q", (value - EPOCH) // timedelta(microseconds=1))
        elif name == "ip":  # inet: family, bits, is_cidr, length, address
            address = ipaddress.ip_address(value)
            family, bits = (2, 32) if address.version == 4 else (3, 128)
            data = bytes([family, bits, 0, len(address.packed)]) + address.packed
        elif name == "status":
            data = struct.pack(">i", value)
        elif name == "duration_ms":
            data = struct.pack(">d", value)
        elif name in ("changes", "metadata", "presentation"):
            data = b"\x01" + value.encode()
        else:
            data = value.encode("utf-8", "surrogatepass")
        out.append(struct.pack(">i", len(data)) + data)
    return b"".join(out)


def reference(row: tuple[Any, ...], json_values: dict[str, Any]) -> bytes:
    """The reference path: rfc8785 of the item as the API writes it."""
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    values.update(json_values)
    return rfc8785.dumps({"kind": "row", "item": _i_json(as_json(item(values)))})


def _row(
    texts: list[str | None],
    times: tuple[datetime, datetime],
    status: int | None,
    duration: float | None,
    jsonb: list[str | None],
    row_id: uuid.UUID,
    ip: str | None,
) -> tuple[Any, ...]:
    (action, category, severity, outcome, actor_id, actor_type, actor_name, actor_email,
     entity_type, entity_id, entity_name, tenant, request_id, user_agent, method,
     path) = texts  # fmt: skip
    return (
        7, row_id, times[0], times[1], action, category, severity, outcome,
        actor_id, actor_type, actor_name, actor_email, entity_type, entity_id, entity_name, tenant,
        request_id, ip, user_agent, method, path, status, duration,
        jsonb[0], jsonb[1], jsonb[2], texts[0], texts[1],
    )  # fmt: skip


@pytest.mark.unit
@settings(max_examples=1500, deadline=None)
@given(
    texts=st.lists(TEXT, min_size=16, max_size=16),
    ip=IP,
    times=st.tuples(TIME, TIME),
    status=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    duration=st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=0, max_value=1e6),
    json_columns=st.lists(st.none() | JSON, min_size=3, max_size=3),
    ascii_only=st.booleans(),
    id_bits=st.integers(min_value=0, max_value=2**128 - 1),
)
def test_a_leaf_written_from_the_copy_tuple_is_the_rfc8785_form_of_its_item(
    texts: list[str | None],
    ip: str | None,
    times: tuple[datetime, datetime],
    status: int | None,
    duration: float | None,
    json_columns: list[Any],
    ascii_only: bool,
    id_bits: int,
) -> None:
    """Random rows (any unicode, escapes, floats, integers past 2**53, nulls, nested JSON):
    the C's leaf is the reference's byte for byte, or the C leaves the row to Python."""
    jsonb = [None if v is None else _pg_json(v, ascii_only) for v in json_columns]
    row = _row(texts, times, status, duration, jsonb, uuid.UUID(int=id_bits), ip)
    names = ("changes", "metadata", "presentation")
    expected = reference(row, dict(zip(names, json_columns, strict=True)))
    data = copyleaf.leaf_data(copy_tuple(row))
    assert data is None or data == expected


def _ordinary(**changes: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    values: dict[str, Any] = {
        "seq": 1, "id": uuid.UUID("0190a0b1-0000-7000-8000-000000000001"),
        "ts": datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC),
        "received_at": datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        "action": "project.updated", "category": "project", "severity": "info",
        "outcome": "success", "actor_id": "u-1", "actor_type": "user", "actor_name": "Zoë 日本",
        "actor_email": None, "entity_type": "project", "entity_id": "p-1",
        "entity_name": 'a "quoted"\n\tname\x01\x7f', "tenant": None, "request_id": "req-1",
        "ip": "2001:db8::1", "user_agent": "Mozilla/5.0", "method": "POST", "path": "/p/1",
        "status": 200, "duration_ms": 12.5,
        "changes": [{"field": "name", "old": "a", "new": "b\u2028"}],
        "metadata": {"plan": "pro", "seats": 12, "ratio": 0.25, "b": None, "aa": [True, False],
                     "nested": {"z": {"y": "x\\"}, "é": 1, "e": -0.5}, "": "empty key"},
        "presentation": {"code": "audit.project.updated", "params": {"name": "x"}},
        "source": "web", "received_via": "redis:audit-logs",
    }  # fmt: skip
    values.update(changes)
    json_values = {n: values[n] for n in ("changes", "metadata", "presentation")}
    for name, value in json_values.items():
        values[name] = None if value is None else _pg_json(value, False)
    return tuple(values[n] for n in LEAF_COLUMN_NAMES), json_values


@pytest.mark.unit
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"actor_id": None, "entity_type": None, "entity_id": None, "status": None},
        {"request_id": None, "ip": None, "user_agent": None, "method": None, "path": None,
         "status": None, "duration_ms": None, "changes": None, "metadata": None},
        {"ts": datetime(1, 1, 1, tzinfo=UTC), "received_at": datetime(9999, 12, 31, 23, 59, 59,
                                                                       999999, tzinfo=UTC)},
        {"ts": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "duration_ms": 1e15 + 0.5},
        {"metadata": {"n": 123456789012345, "m": -999999999999999, "f": 1234.5678}},
    ],
)  # fmt: skip
def test_an_ordinary_row_is_written_by_the_c_and_is_the_reference(changes: dict[str, Any]) -> None:
    """The C writes ordinary rows itself (a C unsure of everything would pass the property)."""
    row, json_values = _ordinary(**changes)
    data = copyleaf.leaf_data(copy_tuple(row))
    assert data is not None
    assert data == reference(row, json_values)


@pytest.mark.unit
@pytest.mark.parametrize(
    "metadata",
    [
        '{"n": 9007199254740993}',  # an integer past 2**53: a double in RFC 8785
        '{"\U0001d11e": 1, "\ue000": 2}',  # keys UTF-16 sorts unlike code points
        '{"a\\n": 1, "a!": 2}',  # a key with an escape: sorted on what it decodes to
        '{"r": 1e-7}',  # exponent forms
        '{"s": "\\u00e9"}',  # an escape PostgreSQL does not write
        '{"s": "\\/"}',
        '{"a": 1, "a": 2}',  # a duplicate key
        '{"a": 1',  # not JSON
        "[" * 70 + "]" * 70,  # deeper than the C goes
    ],
)
def test_what_the_c_is_unsure_of_it_leaves_to_python(metadata: str) -> None:
    row, _ = _ordinary()
    at = LEAF_COLUMN_NAMES.index("metadata")
    row = (*row[:at], metadata, *row[at + 1 :])
    assert copyleaf.leaf_data(copy_tuple(row)) is None


@pytest.mark.unit
def test_invalid_utf8_in_a_text_column_is_left_to_python() -> None:
    row, _ = _ordinary()
    tuple_ = copy_tuple(row).replace(b"Mozilla/5.0", b"Mozilla\xff5.0")
    assert copyleaf.leaf_data(tuple_) is None


@pytest.mark.unit
def test_rows_cut_anywhere_between_chunks_hash_as_whole_ones() -> None:
    """hash_rows reads the whole tuples of a chunk and tells where the next one begins."""
    rows = [_ordinary(entity_id=f"p-{i}", metadata={"i": i})[0] for i in range(5)]
    stream = HEADER + b"".join(copy_tuple(r) for r in rows) + b"\xff\xff"
    whole = _read(stream)
    rng = random.Random(8)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), 4))
        assert (
            _read(*(stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)))
            == whole
        )
    assert whole == ([1] * 5, whole[1], [], True)
    assert (
        len(whole[1]) == 5 * 32 and len(set(whole[1][i : i + 32] for i in range(0, 160, 32))) == 5
    )


HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)


def _read(*chunks: bytes) -> tuple[list[int], bytes, list[int], bool]:
    reader = copyleaf.Reader()
    for chunk in chunks:
        reader.feed(chunk)
    assert reader.rest == b""
    return reader.seqs, b"".join(reader.hashes), reader.unsure, reader.finished
