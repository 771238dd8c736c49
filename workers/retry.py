"""The retry policy: how a failed write is classified, retried, or set aside."""

from __future__ import annotations

import asyncio
import enum
import logging
import time

import asyncpg

# Unknown errors: MAX_ATTEMPTS with exponential backoff from BACKOFF_BASE; the numbers live in
# service/policy.py so the admin API can show them without importing the worker.
from service.policy import BACKOFF_BASE as BACKOFF_BASE
from service.policy import MAX_ATTEMPTS as MAX_ATTEMPTS

logger = logging.getLogger(__name__)

# --- The policy, written out where it is defined --------------------------------------------
# arq counts every start of a job as a try, including breaker deferrals and reruns after a
# killed worker; deferrals must never fail a job, so arq's own limit is only a backstop and
# MAX_ATTEMPTS is enforced by the worker, counting unknown errors only. A job whose runs never
# end (it kills its worker: out of memory, say) is set aside after MAX_UNFINISHED_RUNS.
ARQ_MAX_TRIES = 1_000
MAX_UNFINISHED_RUNS = 3
# Infrastructure errors (PostgreSQL unreachable, restarting, out of connections) burn no
# attempt: they open the breaker, which stops the worker taking jobs and probes the database
# with growing pauses until it answers, so an outage of any length ends with every event stored.
BREAKER_FIRST_PAUSE = 0.5  # seconds
BREAKER_MAX_PAUSE = 5.0  # seconds; how stale "the database is back" can get
DEFER_WHILE_OPEN = 1.0  # seconds; jobs caught in flight when the breaker opens go back this long


class Failure(enum.Enum):
    """What kind of failure an exception is."""

    DATA = "data"  # PostgreSQL rejected the rows: permanent, isolate and dead-letter them
    INFRASTRUCTURE = "infrastructure"  # the database is away: wait, burn nothing
    UNKNOWN = "unknown"  # anything else: the explicit policy above


_INFRA_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_DATA_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint


def classify(exc: BaseException) -> Failure:
    """Tell what kind of failure `exc` is."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in _DATA_SQLSTATE_CLASSES:
            return Failure.DATA
        if sqlstate[:2] in _INFRA_SQLSTATE_CLASSES:
            return Failure.INFRASTRUCTURE
        return Failure.UNKNOWN
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.exceptions.ConnectionDoesNotExistError,
    ):
        return Failure.INFRASTRUCTURE
    return Failure.UNKNOWN


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` after an unknown error."""
    return float(BACKOFF_BASE * 2 ** (attempt - 1))


class Breaker:
    """Open while the database is unreachable; closed again by a successful probe."""

    def __init__(self) -> None:
        self.opened_at: float | None = None
        self.trips = 0
        self._pause = BREAKER_FIRST_PAUSE
        self._closed = asyncio.Event()
        self._closed.set()

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def trip(self, exc: BaseException) -> None:
        """Open the breaker (idempotent while open)."""
        if self.is_open:
            return
        self.trips += 1
        self.opened_at = time.monotonic()
        self._pause = BREAKER_FIRST_PAUSE
        self._closed.clear()
        logger.warning(
            "database unreachable (%s); breaker open, taking no work", type(exc).__name__
        )

    def close(self) -> None:
        """Close the breaker after the database answered."""
        if self.is_open:
            opened = self.opened_at or time.monotonic()
            logger.warning(
                "database answers again after %.1f s; breaker closed", time.monotonic() - opened
            )
        self.opened_at = None
        self._closed.set()

    def next_pause(self) -> float:
        """Return how long to wait before the next probe, growing to BREAKER_MAX_PAUSE."""
        pause = self._pause
        self._pause = min(self._pause * 2, BREAKER_MAX_PAUSE)
        return pause

    async def wait_closed(self) -> None:
        """Wait until the breaker is closed."""
        await self._closed.wait()
