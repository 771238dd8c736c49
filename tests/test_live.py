"""The live stream's entry: a write's rows as seq ranges and a ts span."""

from datetime import UTC, datetime, timedelta

import pytest

from service.live import live_entry, read_live_entry

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`

T = datetime(2026, 12, 1, tzinfo=UTC)


def test_an_entry_names_every_row_of_a_write_in_a_few_bytes() -> None:
    rows = [(seq, T + timedelta(seconds=seq % 7)) for seq in range(1000, 1500)]
    rows += [(2000, T - timedelta(days=3)), (1999, T), (7, T)]
    fields = live_entry(rows)
    assert len(fields["rows"]) < 120  # 503 rows
    entry = read_live_entry({b"rows": fields["rows"]})
    assert entry is not None
    assert entry.seqs == "{[7,8),[1000,1500),[1999,2001)}"
    assert (entry.ts_from, entry.ts_to) == (T - timedelta(days=3), T + timedelta(seconds=6))


def test_an_item_of_another_shape_is_no_entry() -> None:
    assert read_live_entry({b"keys": b"[]"}) is None
    assert read_live_entry({b"rows": b'{"seqs": 1}'}) is None
    assert read_live_entry({b"rows": b"not json"}) is None
