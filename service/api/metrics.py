"""Prometheus metrics, read from Redis at scrape time: the truth is shared by every API replica."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.api.destinations import metric_families as destination_families
from service.api.errors import ApiError
from service.api.openapi import operation
from service.api.producers import INGEST_CLIENTS
from service.api.state import CLIENT, POOL, REDIS, SETTINGS
from service.ops.queue_stats import events_per_second, totals, workers
from service.ops.task_model import STATUSES
from service.ops.tasks import TaskQueue
from service.store import tlog

Family = CounterMetricFamily | GaugeMetricFamily


class _Snapshot(Collector):
    """Metric families gathered before the scrape (collectors are synchronous, Redis is not)."""

    def __init__(self, families: Iterable[Family]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Family]:
        yield from self._families


async def gather(app: web.Application) -> list[Family]:
    """Read every metric of the app's queue."""
    redis, settings = app[REDIS], app[SETTINGS]
    queue = settings.queue
    counts, oldest = await TaskQueue.from_settings(redis, settings).counts()
    done = await totals(redis, queue)
    alive = await workers(redis, queue)
    rate = await events_per_second(redis, queue)

    tasks = GaugeMetricFamily("auditq_tasks", "Tasks by status", labels=["queue", "status"])
    for status in STATUSES:
        tasks.add_metric([queue, status], getattr(counts, status))
    lag = GaugeMetricFamily(
        "auditq_oldest_queued_age_seconds", "Wait of the oldest queued task", labels=["queue"]
    )
    lag.add_metric([queue], oldest)
    throughput = GaugeMetricFamily(
        "auditq_events_stored_per_second", "Events stored per second, last minute", labels=["queue"]
    )
    throughput.add_metric([queue], rate)
    families: list[Family] = [tasks, lag, throughput]
    for name, value, text in (
        ("auditq_events_stored", done.events_stored, "Events stored by the workers"),
        ("auditq_events_dead_lettered", done.events_dead_lettered, "Events set aside"),
        ("auditq_events_retried", done.events_retried, "Events replayed from the dead letter"),
    ):
        counter = CounterMetricFamily(name, text, labels=["queue"])
        counter.add_metric([queue], value)
        families.append(counter)

    client = app[CLIENT]
    failures = CounterMetricFamily(
        "auditq_api_capture_failures",
        "Events the API's own client could not queue (admin actions, HTTP ingest)",
        labels=["reason"],
    )
    failures.add_metric(["failed"], client.failed)
    failures.add_metric(["dropped"], client.dropped)
    uncertain = CounterMetricFamily(
        "auditq_api_capture_uncertain",
        "Events the API's own client sent without a confirmation in time: they may be stored",
    )
    uncertain.add_metric([], client.uncertain)
    unreplicated = CounterMetricFamily(
        "auditq_api_capture_unreplicated",
        "Events the API's clients queued while the Redis primary had no replica connected "
        "(AUDITQ_REDIS_WAIT_REPLICAS=auto)",
    )
    ingest = app.get(INGEST_CLIENTS)
    ingest_clients = ingest.clients() if ingest is not None else []
    unreplicated.add_metric([], client.unreplicated + sum(c.unreplicated for c in ingest_clients))
    families += [failures, uncertain, unreplicated]

    up = GaugeMetricFamily("auditq_workers", "Workers with a fresh heartbeat", labels=["queue"])
    up.add_metric([queue], len(alive))
    breaker = GaugeMetricFamily(
        "auditq_worker_breaker_open",
        "1 while a worker's database breaker is open",
        labels=["worker"],
    )
    running = GaugeMetricFamily("auditq_worker_jobs_running", "Jobs running", labels=["worker"])
    jobs = CounterMetricFamily(
        "auditq_worker_tasks", "Tasks a worker finished", labels=["worker", "outcome"]
    )
    for worker in alive:
        breaker.add_metric([worker.id], 1.0 if worker.breaker_open else 0.0)
        running.add_metric([worker.id], worker.jobs_running)
        jobs.add_metric([worker.id, "complete"], worker.jobs_done)
        jobs.add_metric([worker.id, "failed"], worker.jobs_failed)
    families += [up, breaker, running, jobs]
    families += await destination_families(app)  # contract §11: health per destination
    families += await _log_families(app)
    return families


async def _log_families(app: web.Application) -> list[Family]:
    """The transparency log's size, and whether sealing stopped (none while PostgreSQL is away)."""
    try:
        async with app[POOL].acquire() as conn:
            status = await tlog.log_status(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return []
    size = GaugeMetricFamily("auditq_log_tree_size", "Leaves of the transparency log")
    size.add_metric([], float(status["tree_size"]))
    signed = GaugeMetricFamily(
        "auditq_log_checkpoint_size", "Tree size of the latest signed checkpoint"
    )
    signed.add_metric([], float(status["checkpoint_size"] or 0))
    stopped = GaugeMetricFamily(
        "auditq_sealing_stopped",
        "1 while the sealer refuses to sign: the log does not extend its last checkpoint",
    )
    stopped.add_metric([], 1.0 if tlog.stopped_reason(status) else 0.0)
    return [size, signed, stopped]


@operation(
    summary="Prometheus metrics (text format; Bearer AUDITQ_METRICS_TOKEN when that is set)",
    responses={200: {"type": "string"}},
    media_types=("text/plain",),
    errors=(401,),
)
async def metrics(request: web.Request) -> web.Response:
    """Expose the queue's metrics in Prometheus text format."""
    wanted = request.app[SETTINGS].metrics_token
    if wanted is not None:  # worker host names and pids are not for everyone (docs/metrics.md)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), wanted.encode()
        ):
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <AUDITQ_METRICS_TOKEN>")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await gather(request.app)))
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


ROUTES = [web.get("/metrics", metrics)]
