"""A row's leaf data: the fast path (msgspec, ES6 numbers) is byte for byte RFC 8785."""

from __future__ import annotations

import json
import random
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from service.integrity.leaf import (
    _i_json,
    as_json,
    canonical,
    decode_jsonb,
    es6_number,
    fast_row_leaf,
    raw_float,
    row_leaf,
)
from service.store.items import item
from service.store.leaves import (
    LEAF_COLUMN_NAMES,
    LEAF_COLUMNS,
    LEAF_COLUMNS_TEXT_TIMES,
    row_leaf_data,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


def test_es6_numbers_match_rfc8785_on_random_doubles() -> None:
    rng = random.Random(8785)
    values = [1.0, 1e21, 1e20, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 0.1, 2.5e-7]
    for _ in range(50_000):
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if value == value and abs(value) != float("inf"):
            values.append(value)
        values.append(rng.random() * 10 ** rng.randint(-12, 25))
    for value in values:
        assert es6_number(value) == rfc8785.dumps(value).decode(), value


@settings(max_examples=400, deadline=None)
@given(
    metadata=JSON,
    changes=JSON,
    duration=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_the_fast_row_leaf_is_the_rfc8785_form_of_the_item(
    metadata: Any, changes: Any, duration: float | None
) -> None:
    text_meta, text_changes = json.dumps(metadata), json.dumps(changes)
    base = {"id": "0190a0b1-0000-7000-8000-000000000001", "action": "a.b", "status": 200}
    slow = {
        **base,
        "metadata": json.loads(text_meta),
        "changes": json.loads(text_changes),
        "duration_ms": duration,
    }
    fast = {
        **base,
        "metadata": decode_jsonb(text_meta),
        "changes": decode_jsonb(text_changes),
        "duration_ms": raw_float(duration),
    }
    reference = row_leaf(as_json(slow))
    assert reference == canonical({"kind": "row", "item": as_json(slow)})
    data = fast_row_leaf(fast)
    assert data is None or data == reference


def test_an_ordinary_item_takes_the_fast_path_and_a_big_integer_the_reference_one() -> None:
    meta = '{"plan": "pro", "seats": 3, "ratio": 0.25, "name": "Zoë 日本"}'
    item = {"id": "x", "metadata": decode_jsonb(meta), "duration_ms": raw_float(12.0)}
    data = fast_row_leaf(item)
    assert data is not None
    assert data == row_leaf(as_json({"id": "x", "metadata": json.loads(meta), "duration_ms": 12.0}))
    assert b'"duration_ms":12,' in data
    assert fast_row_leaf({"metadata": decode_jsonb('{"n": 9007199254740993}')}) is None


TEXT = st.none() | st.text(max_size=12)
TIME = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(TEXT, min_size=17, max_size=17),
    times=st.tuples(TIME, TIME),
    status=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    duration=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    json_columns=st.lists(st.none() | JSON, min_size=3, max_size=3),
)
def test_a_stored_rows_leaf_built_fast_is_the_rfc8785_form_of_its_item(
    texts: list[str | None],
    times: tuple[datetime, datetime],
    status: int | None,
    duration: float | None,
    json_columns: list[Any],
) -> None:
    """service/store/leaves.py against rfc8785 of the item as the API writes it."""
    (action, category, severity, outcome, actor_id, actor_type, actor_name, actor_email,
     entity_type, entity_id, entity_name, tenant, request_id, ip, user_agent, method,
     path) = texts  # fmt: skip
    row_id = uuid.UUID(int=random.Random(len(texts[0] or "")).getrandbits(128))
    jsonb = [None if v is None else json.dumps(v) for v in json_columns]
    row = (
        1, row_id, times[0], times[1], action, category, severity, outcome,
        actor_id, actor_type, actor_name, actor_email, entity_type, entity_id, entity_name, tenant,
        request_id, ip, user_agent, method, path, status, duration,
        jsonb[0], jsonb[1], jsonb[2], "tests", "redis:test",
    )  # fmt: skip
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    for name, value in zip(("changes", "metadata", "presentation"), json_columns, strict=True):
        values[name] = value
    reference = rfc8785.dumps({"kind": "row", "item": _i_json(as_json(item(values)))})
    assert row_leaf_data(row) == reference


@pytest.mark.unit
def test_the_leaf_query_reads_the_columns_its_names_say_in_their_order() -> None:
    """row_leaf_data unpacks by position and its reference path by name: the SELECT list
    must name the canonical record's columns in the same order."""
    for columns in (LEAF_COLUMNS, LEAF_COLUMNS_TEXT_TIMES):
        selected = [part.split()[-1] for part in _top_level(columns)]
        assert tuple(selected) == LEAF_COLUMN_NAMES


def _top_level(select_list: str) -> list[str]:
    """A SELECT list's items: split at the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for at, char in enumerate(select_list):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(select_list[start:at])
            start = at + 1
    return [*items, select_list[start:]]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        ("𝄞 and \ue000", '{"a": 1}'),  # outside the BMP in a plain column: written alike
        ("12345678901234567890", '{"a": 1}'),  # a run of digits in a string column
        ("x", '{"\ue000": 1, "𝄞": 2}'),  # keys UTF-16 sorts unlike code points
        ("x", '{"n": 9007199254740993, "m": 12345678901234567}'),  # integers past 2**53
        ("x", '{"r": 0.1, "big": 1e21, "tiny": 1e-7, "n": -0.0}'),  # ES6 numbers
    ],
)
def test_a_leaf_is_the_rfc8785_form_whichever_column_holds_the_hard_case(
    name: str, metadata: str
) -> None:
    """The fast path looks for the hard cases only in the JSON columns: every other column
    is written alike by both paths, whatever it holds."""
    row = (
        1, uuid.UUID(int=7), datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "a.b", "c", "info", "success",
        "u-1", "user", name, None, "t", name, None, None,
        name, "203.0.113.7", name, "POST", "/p", 200, 0.1,
        None, metadata, '{"code": "' + name + '"}', "web", "redis:x",
    )  # fmt: skip
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    for column in ("metadata", "presentation"):
        values[column] = json.loads(values[column])
    reference = rfc8785.dumps({"kind": "row", "item": _i_json(as_json(item(values)))})
    assert row_leaf_data(row) == reference


@pytest.mark.unit
def test_a_key_outside_the_bmp_spelt_escaped_takes_the_reference_path_too() -> None:
    row = (
        1, uuid.UUID(int=7), datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC),
        "a.b", None, None, None, None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None,
        None, '{"\\ue000": 1, "\\ud834\\udd1e": 2, "\\u0001": 3}', None, "web", "redis:x",
    )  # fmt: skip
    values = dict(zip(LEAF_COLUMN_NAMES, row, strict=True))
    values["metadata"] = json.loads(values["metadata"])
    reference = rfc8785.dumps({"kind": "row", "item": _i_json(as_json(item(values)))})
    assert row_leaf_data(row) == reference
