"""The event's own rules, as plain functions: a ts too far ahead is refused with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.errors import InvalidEvent
from service.events import AuditEvent, check_complete, finalize

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`


def test_a_ts_further_ahead_than_the_limit_is_refused_with_its_reason() -> None:
    soon = AuditEvent(action="clock.checked", ts=datetime.now(UTC) + timedelta(seconds=60))
    finalize(soon, max_future_s=300)  # within the limit
    later = AuditEvent(action="clock.checked", ts=datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(InvalidEvent, match=r"ahead of the server clock.*AUDITQ_MAX_FUTURE_S"):
        finalize(later, max_future_s=300)
    done, _ = finalize(soon)
    with pytest.raises(InvalidEvent, match="ahead"):
        check_complete(done, max_future_s=10)


def _nested(depth: int) -> object:
    """`depth` lists, one inside the other, around a string."""
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _deep_events(depth: int) -> list[AuditEvent]:
    """A fresh event (no id, no ts: its nesting bounded by its JSON) nesting `depth` levels
    below each place that is checked (the place itself is level 0)."""
    from service.events import Change, Presentation

    return [
        AuditEvent(action="doc.viewed", metadata={"a": _nested(depth)}),
        AuditEvent(
            action="doc.viewed",
            presentation=Presentation(code="c", params={"a": _nested(depth)}),
        ),
        AuditEvent(action="doc.viewed", changes=[Change(field="f", new=_nested(depth + 1))]),
    ]


@pytest.mark.parametrize("index", range(3))
def test_a_fresh_event_at_the_nesting_limit_passes_one_level_more_is_refused(index: int) -> None:
    from service.events import MAX_NESTING

    finalize(_deep_events(MAX_NESTING)[index], validate=True)
    name = ("metadata", r"presentation\.params", r"changes\[0\]\.new")[index]
    with pytest.raises(InvalidEvent, match=f"`{name}` nests deeper than {MAX_NESTING} levels"):
        finalize(_deep_events(MAX_NESTING + 1)[index], validate=True)


@pytest.mark.parametrize("index", range(3))
def test_a_fresh_event_too_deep_to_encode_is_refused_for_its_nesting(index: int) -> None:
    with pytest.raises(InvalidEvent, match="nests deeper than"):
        finalize(_deep_events(5000)[index])


def test_a_fresh_event_holding_itself_is_refused_for_its_nesting() -> None:
    metadata: dict[str, object] = {}
    metadata["self"] = metadata
    with pytest.raises(InvalidEvent, match="nests deeper than"):
        finalize(AuditEvent(action="doc.viewed", metadata=metadata))


def test_a_fresh_event_gets_a_uuid7_and_the_time_that_id_carries() -> None:
    from service.events import new_event_id

    for _ in range(2000):  # across milliseconds: the time cached for one is not reused
        done, data = finalize(AuditEvent(action="doc.viewed"), validate=True)
        assert done.id is not None and done.id.version == 7 and str(done.id) in data.decode()
        assert done.ts == datetime.fromtimestamp((done.id.int >> 80) / 1000, UTC)
    assert new_event_id().version == 7
