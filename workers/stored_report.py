"""The worker's INFO line about what it stored: one per batch when quiet, a summary under load.

At demo rate a line per task scrolled the terminal (`make run DEMO=1`); at most one INFO line
every SUMMARY_EVERY_S now says what was stored since the last one (the batch itself when it was
the only one). Every task keeps its own line at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("auditq.worker")

SUMMARY_EVERY_S = 5.0  # seconds between INFO lines about stored events, at most
TASK_LINE = "[AuditLogWorker] task %s: %d events stored (%d new), %d rejected in %.1f ms"
SUMMARY_LINE = (
    "[AuditLogWorker] %d events stored (%d new), %d rejected, in %d tasks over the last %.1f s"
)


class StoredReport:
    """Counts of the tasks stored since the last INFO line, and when to write the next."""

    def __init__(
        self,
        *,
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every_s = every_s
        self._clock = clock
        self._last_line: float | None = None
        self._since = clock()
        self._reset()

    def _reset(self) -> None:
        self.tasks = self.events = self.new = self.rejected = 0
        self._only: tuple[str, int, int, int, float] | None = None

    def add(self, task_id: str, stored: int, new: int, rejected: int, elapsed_ms: float) -> None:
        """Count one task's stored events; write the INFO line when it is due."""
        if self.tasks == 0:
            self._since = self._clock()
        self.tasks += 1
        self.events += stored
        self.new += new
        self.rejected += rejected
        self._only = (task_id, stored, new, rejected, elapsed_ms) if self.tasks == 1 else None
        if not self.flush_if_due():
            logger.debug(TASK_LINE, task_id, stored, new, rejected, elapsed_ms)

    def flush_if_due(self) -> bool:
        """Write the INFO line if there is something to say and the last one is old enough."""
        now = self._clock()
        if self.tasks == 0 or (
            self._last_line is not None and now - self._last_line < self._every_s
        ):
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write the INFO line now (a worker stopping), if anything was stored since the last."""
        if self.tasks == 0:
            return
        now = self._clock()
        if self._only is not None:
            logger.info(TASK_LINE, *self._only)
        else:
            since = self._since if self._last_line is None else self._last_line
            logger.info(SUMMARY_LINE, self.events, self.new, self.rejected, self.tasks, now - since)
        self._last_line = now
        self._reset()
