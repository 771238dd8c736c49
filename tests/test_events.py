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
