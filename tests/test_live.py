"""The live stream's entry: a write's rows as seq ranges and a ts span."""

from datetime import UTC, datetime, timedelta

import pytest

from service.queue.live import live_entry, read_live_entry

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


def test_a_forged_entry_naming_unbounded_or_huge_ranges_is_not_read() -> None:
    """Anyone who can write the stream must not make every live reader fetch whole tables."""
    from service.queue.live import MAX_ROWS, read_live_entry

    def fields(seqs: str, ts_from: str = "2026-01-01T00:00:00Z") -> dict[bytes, bytes]:
        body = f'{{"seqs":"{seqs}","ts_from":"{ts_from}","ts_to":"2026-01-02T00:00:00Z"}}'
        return {b"rows": body.encode()}

    good = read_live_entry(fields("{[1,501),[900,901)}"))
    assert good is not None and good.row_count == 501
    for forged in (
        "{[0,)}",  # unbounded
        "{(,)}",
        "{[1,2),[5,3)}",  # backwards
        f"{{[0,{MAX_ROWS + 1})}}",  # more rows than any write stores
        "{[1,2)} OR true",
        "{" + ",".join(f"[{i},{i + 1})" for i in range(0, 4000, 2)) + "}",  # too many ranges
    ):
        assert read_live_entry(fields(forged)) is None, forged
    assert read_live_entry(fields("{[1,2)}", ts_from="2027-01-01T00:00:00Z")) is None
