"""Running the arq worker: its setup and teardown, the Redis-outage-proof poll loop, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from arq import Worker, cron, func
from arq.connections import RedisSettings
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.capture.relay import RelayTask
from service.integrity.keys import load_or_create_private_key
from service.own_events import STARTED, STOPPING, WORKER_SOURCE, lifecycle_event
from service.producer.client import AuditClient
from service.queue.jobs import JOB_FUNCTION, Provenance, deserialize_job, job_serializer
from service.redaction import redact_sensitive_in_string
from service.settings import Settings
from service.store import db
from service.store.partitions import ensure_partitions
from service.store.seals import LogConfig
from service.store.secrets import read_provenance_key
from workers import delivery, functions, heartbeat, rollup, sealer
from workers.arq_redis import arq_settings, create_arq_pool
from workers.erased import ErasedSubjects
from workers.job import set_aside_if_oversized, store_events
from workers.maintenance import MAINTENANCE_VIA, maintain
from workers.retry import ARQ_MAX_TRIES
from workers.state import STATE, WorkerState

logger = logging.getLogger("auditq.worker")

POLL_DELAY = 0.02  # seconds between queue polls; bounds the pickup latency of a new job
REDIS_DOWN_PAUSE = 0.5  # seconds between polls while Redis does not answer
SHUTDOWN_GRACE = 20.0  # seconds a stop takes at most: running jobs finish, then the close
CLOSE_BUDGET = 5.0  # seconds of the grace kept for arq's close, which talks to Redis


async def _startup(ctx: dict[str, Any]) -> None:
    state: WorkerState = ctx[STATE]
    state.redis = ctx["redis"]
    settings = state.settings
    settings.require_database()
    assert settings.worker_url is not None  # the database URL when no role of its own is set
    state.pool = await db.create_pool(settings.worker_url, size=settings.db_pool_size)
    state.erased = ErasedSubjects(settings.subject_entity_types, settings.subject_key_path)
    if settings.retention_days:
        logger.warning(
            "AUDITQ_RETENTION_DAYS is not read: the retention is the store's policy "
            "(`auditq policy set --retention-days N` with the schema owner's URL)"
        )
    # Before producers need it: this worker's version of the enqueue, with its job size bound.
    await functions.ensure_loaded(state, check=False)
    # Before the first job: a month's rows must never land in the default partition while
    # that month's own partition is about to be made (the key is unique per partition).
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=state.settings.partitions_ahead_months)
        key = state.provenance_key = await read_provenance_key(conn)
    state._heartbeat = asyncio.get_running_loop().create_task(
        heartbeat.run(state, worker_id=state.worker_id), name="auditq-heartbeat"
    )
    state._rollup = asyncio.get_running_loop().create_task(
        rollup.run(state.pool), name="auditq-rollup"
    )
    if settings.sealing:  # integrity checkpoints (docs/integrity.md)
        seal_key = load_or_create_private_key(settings.seal_key_path)
        state._sealer = asyncio.get_running_loop().create_task(
            sealer.run(
                state.pool,
                seal_key,
                interval_s=settings.seal_interval_s,
                log=LogConfig(state_path=settings.seal_state_path, origin=settings.log_origin),
                witness_urls=settings.witness_urls,
            ),
            name="auditq-sealer",
        )
    if settings.capture_database_urls:  # the outboxes of application databases
        state.capture_relay = RelayTask(settings)
    if settings.destinations:  # streaming to destinations (docs/destinations.md)
        state._delivery = asyncio.get_running_loop().create_task(
            delivery.run(settings, busy=state.ingesting), name="auditq-delivery"
        )
    if state.audit_lifecycle:
        provenance = Provenance(via=MAINTENANCE_VIA, key=key, task_prefix="worker")
        # A spool of its own: a segment is replayed with the claim of the client that wrote it,
        # and the API's client (same data dir under `auditq run`) has another claim.
        spool = settings.spool_dir / "worker" if settings.spool_dir is not None else None
        state.client = AuditClient.from_settings(
            state.settings, provenance=provenance, spool_dir=spool
        )
        state.client.capture_nowait(
            lifecycle_event(STARTED, source=WORKER_SOURCE, worker_id=state.worker_id)
        )
    state.started.set()


async def _shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState = ctx[STATE]
    state.stored_report.flush()
    if state.capture_relay is not None:
        await state.capture_relay.stop()
    if state.client is not None:
        # First, while everything still works: it is stored by this queue's next worker.
        state.client.capture_nowait(
            lifecycle_event(STOPPING, source=WORKER_SOURCE, worker_id=state.worker_id)
        )
        await state.client.aclose()
    if state._probe is not None:
        state._probe.cancel()
    for task in (state._sealer, state._rollup, state._delivery):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if state._heartbeat is not None:
        state._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state._heartbeat
        with contextlib.suppress(Exception):  # Redis away: the heartbeat expires on its own
            await heartbeat.forget(state, worker_id=state.worker_id)
    if state.pool is not None:
        await state.pool.close()


class _HideJobArguments(logging.Filter):
    """Drop the job arguments from arq's "job started" line: they are the events themselves,
    secrets and all when a foreign producer did not redact. arq has no option for this.

    arq's lines for every job started and ended (two a task) pass only when its logger is at
    DEBUG: workers/stored_report.py says what was stored. The line of the worker's stop
    named SIGUSR1, which arq sends itself when it is closed (a Ctrl-C looked like a signal
    nobody sent): it says "stopped" instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("%6.2fs"):  # a job started (→) or ended (←)
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
        if isinstance(record.args, tuple) and len(record.args) == 4 and "→" in msg:
            record.args = (*record.args[:2], "…", record.args[3])
        if (
            msg.startswith("shutdown on %s")
            and isinstance(record.args, tuple)
            and record.args[:1] == ("SIGUSR1",)
        ):
            record.msg = "worker stopped ◆ %d jobs complete ◆ %d failed ◆ %d retries"
            record.args = record.args[1:4]
        return True


# Any Redis failure in the poll loop, e.g. a WatchError that redis-py raises for a connection
# lost while WATCHing, or READONLY/LOADING replies around a failover or restart.
_REDIS_DOWN = (RedisError, OSError)


class _Worker(Worker):
    """arq's worker, waiting out a Redis outage of any length instead of exiting.

    arq ends `main()` on the first Redis error of its poll loop, so a Redis restart used to
    stop the worker for good (its queue intact, but nothing stored until someone restarted
    it). Jobs caught by the outage are safe: their events are stored idempotently, and a job
    whose end could not be recorded is run again after its in-progress key expires.
    """

    _redis_down_since: float | None = None
    _stopping = False
    queued = 0  # jobs ready in the queue at the last poll (running ones included)
    _poll_lock: asyncio.Lock | None = None

    async def stop_picking(self) -> None:
        """Take no job from now on, and return once no poll is halfway through taking one.

        `allow_pick_jobs` is not enough: the breaker sets it again when the database answers,
        and a poll that read job ids before it was cleared goes on to start them, after the
        running jobs were counted, so they ran on into arq's close (and failed there).
        """
        self._stopping = True
        self.allow_pick_jobs = False
        async with self._lock():
            pass

    def _lock(self) -> asyncio.Lock:
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        return self._poll_lock

    async def main(self) -> None:
        if self._pool is None:
            # arq's own create_pool drops the timeouts and retry policy of a Sentinel pool.
            assert self.redis_settings is not None
            self._pool = await create_arq_pool(
                self.redis_settings,
                job_serializer=self.job_serializer,
                job_deserializer=self.job_deserializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await super().main()

    async def _poll_iteration(self) -> None:
        if self._stopping:
            await asyncio.sleep(POLL_DELAY)  # the poll loop runs until stop_worker cancels it
            return
        try:
            async with self._lock():
                # The producer user's batches become jobs first (service/queue/enqueue.lua).
                while await functions.drain(worker_state(self), self.pool) >= functions.DRAIN_BATCH:
                    pass
                await super()._poll_iteration()
        except _REDIS_DOWN as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                logger.warning(
                    "Redis fails (%s: %s); waiting for it",
                    type(exc).__name__,
                    redact_sensitive_in_string(
                        str(exc), worker_state(self).settings.redact_extra_keys
                    ),
                )
            await asyncio.sleep(REDIS_DOWN_PAUSE)
            return
        if self._redis_down_since is not None:
            down_s = time.monotonic() - self._redis_down_since
            self._redis_down_since = None
            logger.warning("Redis answers again after %.1f s", down_s)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        self.queued = len(job_ids)
        for job_id in job_ids:
            task_id = job_id.decode()
            # A task this worker runs was sized before it started (arq skips it below).
            if task_id not in self.tasks and await set_aside_if_oversized(
                worker_state(self), self.pool, task_id
            ):
                continue
            counted = self.job_counter
            try:
                await super().start_jobs([job_id])
            except _REDIS_DOWN:
                if self.job_counter > counted and task_id not in self.tasks:
                    # arq took a slot for a job it could not start: give it back, or a few
                    # outages would leave the worker with no slot to run anything.
                    self.job_counter -= 1
                    self.sem.release()
                raise


def redis_settings(url: str) -> RedisSettings:
    """arq's Redis settings with a retry policy, so a Redis restart or a failover is ridden out."""
    return arq_settings(
        url,
        retry=RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), 8),
        # OSError too: redis-py retries a failed connect only for the errors listed here, and
        # a refused connection is still a bare OSError at that point.
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        conn_retries=30,
    )


def build_worker(
    settings: Settings, *, handle_signals: bool = False, audit_lifecycle: bool = False
) -> Worker:
    """Make the arq worker for `settings` (URLs resolved).

    With `audit_lifecycle` (the `auditq` commands), it records `service.started` when it is
    up and `service.stopping` first when it shuts down.
    """
    settings.require_database()
    state = WorkerState(settings, audit_lifecycle=audit_lifecycle)
    arq_logger = logging.getLogger("arq.worker")
    if not any(isinstance(f, _HideJobArguments) for f in arq_logger.filters):
        arq_logger.addFilter(_HideJobArguments())
    worker = _Worker(
        functions=[func(store_events, name=JOB_FUNCTION, max_tries=ARQ_MAX_TRIES)],
        cron_jobs=[cron(maintain, name="maintain", minute={7}, run_at_startup=True)],
        redis_settings=redis_settings(settings.require_redis()),
        queue_name=settings.queue,
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.job_timeout_s,
        poll_delay=POLL_DELAY,
        max_tries=ARQ_MAX_TRIES,
        keep_result=3600,
        job_serializer=job_serializer(settings.redact_extra_keys),
        job_deserializer=deserialize_job,
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={STATE: state},
        handle_signals=handle_signals,
        job_completion_wait=int(SHUTDOWN_GRACE),
        log_results=False,
    )
    state.worker = worker
    return worker


def worker_state(worker: Worker) -> WorkerState:
    state: WorkerState = worker.ctx[STATE]
    return state


async def stop_worker(worker: Worker, *, grace: float = SHUTDOWN_GRACE) -> None:
    """Stop taking jobs, let running ones finish, then close: within `grace` seconds, also
    when Redis is gone (arq's close would retry it for as long as its retry policy says)."""
    worker.allow_pick_jobs = False
    close_budget = min(CLOSE_BUDGET, grace / 2)
    # Jobs cut short by the deadline are safe: their events are stored idempotently when
    # they run again.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace - close_budget):
            if isinstance(worker, _Worker):
                await worker.stop_picking()
            running = [t for t in worker.tasks.values() if not t.done()]
            await asyncio.gather(*running, return_exceptions=True)
    try:
        async with asyncio.timeout(close_budget):
            await worker.close()
    except (TimeoutError, *_REDIS_DOWN) as exc:
        logger.warning("the worker closed without Redis (%s)", type(exc).__name__)
        await _close_without_redis(worker)
    except asyncio.CancelledError:
        # arq's close cancels a job still running and re-raises that job's cancellation: the
        # job runs again (idempotently); only a cancellation of this stop itself goes on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        logger.warning("the worker closed with a job cut short (it runs again)")
        await _close_without_redis(worker)


async def _close_without_redis(worker: Worker) -> None:
    """Let go of what arq's close did not reach: the database pool, the Redis connections."""
    state = worker_state(worker)
    for task in (state._probe, state._heartbeat, state._sealer, state._rollup, state._delivery):
        if task is not None:
            task.cancel()
    if state.capture_relay is not None:
        state.capture_relay.cancel()
    if state.pool is not None:
        state.pool.terminate()
        state.pool = None
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await worker.pool.close(close_connection_pool=True)


def report_redis_outages(extra_keys: frozenset[str] = frozenset()) -> None:
    """Make the running loop say in one line, never with a traceback, that a task ended on
    Redis being gone; any other exception it reports as before.

    A job that a stop without Redis cut short goes on, in arq, to record its end in Redis
    after the close, in tasks nobody awaits any more (a shielded finish_job, a run_job still
    running): that fails, and asyncio reported it with the stack when the process ended. The
    job runs again, as any job cut short does.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    said = False

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal said
        exc = context.get("exception")
        if not isinstance(exc, _REDIS_DOWN):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        task = context.get("task") or context.get("future")
        name = (
            getattr(task.get_coro(), "__qualname__", task.get_name())
            if isinstance(task, asyncio.Task)
            else "a callback"
        )
        logger.log(
            logging.DEBUG if said else logging.WARNING,  # said once: such tasks fail alike
            "%s ended without Redis (%s: %s)",
            name,
            type(exc).__name__,
            redact_sensitive_in_string(str(exc), extra_keys),
        )
        said = True

    loop.set_exception_handler(handle)


async def run_until(worker: Worker, stop: asyncio.Event) -> None:
    """Run `worker` until `stop` is set, then stop it without losing a job."""
    main = asyncio.create_task(worker.main())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if main.done():
        waiter.cancel()
        main.result()  # a worker that died on its own: raise why
        return
    if not worker_state(worker).started.is_set():
        # Stopped while starting: the start-up would go on alongside the close, making Redis
        # connections and background tasks after the close let go of everything. Cut it short
        # first; the close then releases what it made.
        main.cancel()
        await asyncio.wait({main})
    await stop_worker(worker)
    main.cancel()  # worker.main() polls forever; close() only cancels a task arq started itself
    with contextlib.suppress(asyncio.CancelledError):
        await main
