"""How a statistics window is read: which edge days come from the rollup, which from rows.

Exactness on real servers, whichever reading is chosen, is tests/api/test_statistics.py's."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from service.store.rollup import plan

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`

DAY = date(2026, 12, 6)
MIDNIGHT = datetime(2026, 12, 6, tzinfo=UTC)
LATER = datetime(2027, 1, 1, tzinfo=UTC)  # a clock past every window below


def at(hours: float, days: int = 0) -> datetime:
    return MIDNIGHT + timedelta(days=days, hours=hours)


def rows_read(window: tuple[datetime, datetime], now: datetime) -> timedelta:
    """How much time the plan reads from rows (its two spans, capped at now)."""
    spans = plan(*window, now=now).spans
    return sum((max(min(hi, now) - lo, timedelta(0)) for lo, hi in spans), timedelta(0))


def test_a_past_window_takes_each_edge_day_by_its_shorter_part() -> None:
    # 02:00 -> take the first day whole less its first 2 h; 22:00 -> take the last day less 2 h.
    window = plan(at(2, days=-10), at(22, days=-1), now=LATER)
    assert (window.first_day, window.last_day) == (DAY - timedelta(days=10), DAY - timedelta(1))
    assert window.spans == ((at(0, days=-10), at(2, days=-10)), (at(22, days=-1), at(24, -1)))
    # 20:00 and 04:00: both edge days are left out and their 4 h inside the window read.
    window = plan(at(20, days=-10), at(4, days=-1), now=LATER)
    assert (window.first_day, window.last_day) == (DAY - timedelta(days=9), DAY - timedelta(2))
    assert window.spans == ((at(20, days=-10), at(24, days=-10)), (at(0, days=-1), at(4, -1)))


def test_a_window_ending_now_takes_today_whole_at_any_hour() -> None:
    for hour in (0.5, 6, 9.9, 12, 18, 23.5):
        now = at(hour)
        window = plan(now - timedelta(days=30), now, now=now)
        assert window.last_day == DAY, hour
        # Today's rest after now holds no rows: only the first edge day is read, at most 12 h.
        assert rows_read((now - timedelta(days=30), now), now) <= timedelta(hours=12), hour


def test_a_window_within_today_ending_now_reads_the_shorter_way() -> None:
    now = at(10)
    assert rows_read((at(1), now), now) == timedelta(hours=1)  # today less its first hour
    assert plan(at(1), now, now=now).first_day == DAY
    assert rows_read((at(9), now), now) == timedelta(hours=1)  # the last hour itself
    assert plan(at(9), now, now=now).first_day > plan(at(9), now, now=now).last_day


def test_a_window_in_the_future_reads_no_rows() -> None:
    window = plan(at(1, days=2), at(5, days=4), now=MIDNIGHT)
    # Its whole days from the rollup (empty), its edge parts from rows: none exist yet.
    assert (window.first_day, window.last_day) == (DAY + timedelta(days=3), DAY + timedelta(3))
    assert rows_read((at(1, days=2), at(5, days=4)), MIDNIGHT) == timedelta(0)
