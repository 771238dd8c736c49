"""The one-statement path's nesting bound: exactly the depth of the JSON text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.job import _nests_at_most

pytestmark = pytest.mark.unit

# Strings without a quote or a backslash (so the text has no escape), brackets in them too.
_texts = st.text(alphabet=st.sampled_from("ab {}[],:é"), max_size=6)
_json = st.recursive(
    st.none() | st.integers() | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=12,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_json, st.integers(min_value=0, max_value=8))
def test_nesting_is_the_depth_of_the_text_whatever_its_strings_hold(
    value: Any, levels: int
) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    assert b"\\" not in data
    assert _nests_at_most(data, levels) is (_depth(value) <= levels)
