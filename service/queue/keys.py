"""Redis keys: arq's, and those auditq keeps beside them for tasks, stats and metrics."""

from __future__ import annotations

from collections.abc import Callable

from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

# arq's own keys (arq 0.28): the job, its "running" marker, its try counter, its result.
JOB_PREFIX = job_key_prefix  # arq:job:<id>
IN_PROGRESS_PREFIX = in_progress_key_prefix  # arq:in-progress:<id>
RETRY_PREFIX = retry_key_prefix  # arq:retry:<id>
RESULT_PREFIX = result_key_prefix  # arq:result:<id>

LIVE_MAXLEN = 10_000  # entries (one a write): what a reconnecting live tail can resume over
COMPLETE_MAXLEN = 100_000  # entries: TestPlanIt keeps 100,000 completed jobs (and 1 year)
# seconds; events/s over the last minute reads 60 of them, the 15-minute series 900
STORED_COUNTER_TTL = 960
HEARTBEAT_INTERVAL = 5.0  # seconds between a worker's heartbeats
HEARTBEAT_TTL = 30  # seconds; a worker silent this long is gone from the stats


def _key(name: str) -> Callable[[str], str]:
    """The key `name` of a queue."""
    return lambda queue: f"auditq:{queue}:{name}"


def _keys(name: str) -> Callable[[str, str | int], str]:
    """The keys `name:<item>` of a queue, one per item."""
    return lambda queue, item: f"auditq:{queue}:{name}:{item}"


# Hash of task id -> unknown-error attempts so far.
attempts_key = _key("attempts")
# Hash of task id -> starts that never ended (the worker died running it).
unfinished_key = _key("unfinished")
# Per task id: where a task over AUDITQ_MAX_JOB_BYTES is kept, unread, beside its dead letter.
oversized_key = _keys("oversized")
# Capped stream of finished tasks (id, event_count, enqueued/started/finished ms).
complete_key = _key("complete")
# Capped stream of which rows each write stored (service/queue/live.py), in commit order: the
# live tail reads those rows from PostgreSQL.
live_key = _key("live")
# Per second (epoch): counter of events stored during it.
stored_key = _keys("stored")
# Hash of running totals (events stored, dead-lettered, retried) since the queue began.
counters_key = _key("counters")
# Set of the ids of workers that sent a heartbeat.
workers_key = _key("workers")
# Per worker id: hash of its last heartbeat; expires when the worker stops beating.
worker_key = _keys("worker")
# A random token replaced whenever a subject is erased: workers reload the list then.
erased_version_key = _key("erased:version")

# Fields of counters_key.
EVENTS_STORED = "events_stored"
EVENTS_DEAD_LETTERED = "events_dead_lettered"
EVENTS_RETRIED = "events_retried"  # events replayed from the dead letter by an admin
