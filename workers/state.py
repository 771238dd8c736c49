"""What a worker process holds: its settings, breaker, pool and counters, and a job's task."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from typing import Any

import asyncpg
from arq import Worker

from service.capture.relay import RelayTask
from service.producer.client import AuditClient
from service.settings import Settings
from workers.erased import ErasedSubjects
from workers.retry import Breaker
from workers.stored_report import StoredReport

logger = logging.getLogger("auditq.worker")

STATE = "auditq"  # key of WorkerState in arq's ctx


def new_worker_id() -> str:
    """Make an id that tells an operator which host and process a worker is."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class Task:
    """What a job function knows of the job it runs."""

    id: str
    enqueued_ms: int
    job_try: int
    failed_attempts: int = 0  # unknown-error attempts before the one that succeeded
    finalized: bool = False  # from auditq's client or API: completed and checked at capture
    received_via: str = ""  # who delivered it (contract §5 Provenance)
    verified: bool = False  # the API's provenance tag checked out (service/queue/jobs.py)

    @property
    def keyed(self) -> bool:
        """Each event's id and ts were fixed together at capture by the API's own client (its
        tag vouches for that): a redelivery carries the same ts. Any other producer may send
        an id again with another ts (a forged flag costs nothing), and HTTP ingest takes ids
        from producers: their writes probe for the id."""
        return self.finalized and self.verified and not self.received_via.startswith("http:")


@dataclasses.dataclass(eq=False)
class WorkerState:
    """Everything a job needs, made once per worker process."""

    settings: Settings
    breaker: Breaker = dataclasses.field(default_factory=Breaker)
    pool: Any = None  # asyncpg.Pool once started
    redis: Any = None  # arq's ArqRedis once started
    provenance_key: bytes | None = None  # checks the API's provenance tags (service/queue/jobs.py)
    worker: Worker | None = None
    events_stored: int = 0
    events_dead_lettered: int = 0
    tasks_complete: int = 0  # tasks whose every event was stored
    tasks_failed: int = 0  # tasks that left events in the dead letter
    worker_id: str = dataclasses.field(default_factory=new_worker_id)
    audit_lifecycle: bool = False  # record service.started / service.stopping
    client: AuditClient | None = None  # the worker's own producer, for those two events
    erased: ErasedSubjects | None = None  # erased subjects (workers/erased.py), made at startup
    stored_report: StoredReport = dataclasses.field(default_factory=StoredReport)
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set up, polling
    no_functions: bool = False  # the Redis has no functions (before 7): producers EVAL
    drain_failing: bool = False  # moving the producer inbox into jobs fails (said once)
    _probe: asyncio.Task[None] | None = None
    _heartbeat: asyncio.Task[None] | None = None
    _sealer: asyncio.Task[None] | None = None
    _rollup: asyncio.Task[None] | None = None
    capture_relay: RelayTask | None = None  # AUDITQ_CAPTURE_DATABASE_URLS (docs/capture.md)
    _delivery: asyncio.Task[None] | None = None  # destinations (workers/delivery.py)

    def ingesting(self) -> bool:
        """Whether jobs wait in the queue: every job slot is taken, or the worker's last poll
        (every 20 ms) found more jobs ready than it has slots. Ingest goes before delivery
        then (workers/delivery.py). Jobs other workers run count too: that only makes this
        worker's destinations wait a little longer (at most delivery.DEFER_S)."""
        worker = self.worker
        if worker is None:
            return False
        slots = worker.max_jobs
        return len(worker.job_tasks) >= slots or getattr(worker, "queued", 0) > slots

    def trip(self, exc: BaseException) -> None:
        """Open the breaker: stop taking jobs and probe the database until it answers."""
        self.breaker.trip(exc)
        if self.worker is not None:
            self.worker.allow_pick_jobs = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while self.breaker.is_open:
            await asyncio.sleep(self.breaker.next_pause())
            try:
                conn = await asyncpg.connect(self.settings.worker_url, timeout=2)
                await conn.close()
            except Exception as exc:  # every failure means "still down"
                logger.debug("database probe failed: %s", type(exc).__name__)
                continue
            # Connections made before the outage are dead; replace them on next use.
            await self.pool.expire_connections()
            self.breaker.close()
            if self.worker is not None:
                self.worker.allow_pick_jobs = True
