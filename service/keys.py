"""Redis keys: arq's, and those auditq keeps beside them for tasks, stats and metrics."""

from __future__ import annotations

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


def attempts_key(queue: str) -> str:
    """Hash of task id -> unknown-error attempts so far."""
    return f"auditq:{queue}:attempts"


def unfinished_key(queue: str) -> str:
    """Hash of task id -> starts that never ended (the worker died running it)."""
    return f"auditq:{queue}:unfinished"


def oversized_key(queue: str, task_id: str) -> str:
    """Where a task over AUDITQ_MAX_JOB_BYTES is kept, unread, beside its dead letter."""
    return f"auditq:{queue}:oversized:{task_id}"


def complete_key(queue: str) -> str:
    """Capped stream of finished tasks (id, event_count, enqueued/started/finished ms)."""
    return f"auditq:{queue}:complete"


def live_key(queue: str) -> str:
    """Capped stream of which rows each write stored (service/live.py), in commit order: the
    live tail reads those rows from PostgreSQL."""
    return f"auditq:{queue}:live"


def stored_key(queue: str, epoch_s: int) -> str:
    """Counter of events stored during one second."""
    return f"auditq:{queue}:stored:{epoch_s}"


def counters_key(queue: str) -> str:
    """Hash of running totals (events stored, dead-lettered, retried) since the queue began."""
    return f"auditq:{queue}:counters"


def workers_key(queue: str) -> str:
    """Set of the ids of workers that sent a heartbeat."""
    return f"auditq:{queue}:workers"


def worker_key(queue: str, worker_id: str) -> str:
    """Hash of one worker's last heartbeat; expires when the worker stops beating."""
    return f"auditq:{queue}:worker:{worker_id}"


# Fields of counters_key.
EVENTS_STORED = "events_stored"
EVENTS_DEAD_LETTERED = "events_dead_lettered"
EVENTS_RETRIED = "events_retried"  # events replayed from the dead letter by an admin


def erased_version_key(queue: str) -> str:
    """A random token replaced whenever a subject is erased: workers reload the list then."""
    return f"auditq:{queue}:erased:version"
