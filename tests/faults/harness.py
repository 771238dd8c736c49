"""Steady load from several producers, what each accepted, and the reckoning afterwards.

A scenario runs producers (awaited `capture`, `capture_nowait`, the Lua script, HTTP ingest)
into a `Ledger` that records every event a producer was told was accepted, injects its fault,
and ends with `reckon`: every accepted event must be in PostgreSQL exactly once, or, for the
deliberately bad ones only, in the dead letter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from service.events import AuditEvent, Entity, new_event_id
from service.integrity.keys import load_or_create_private_key
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.settings import Settings
from service.store import db
from tests.support.admin_api import insert_token

SETTLE_WITHIN_S = 120.0  # seconds an accepted event may take to be stored after the load
POLL_S = 0.25  # seconds between looks at PostgreSQL while waiting


@dataclasses.dataclass
class Ledger:
    """What the producers were told: the accepted ids, and which of them are bad on purpose."""

    accepted: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> producer
    poison: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why it is bad
    poison_tasks: dict[str, str] = dataclasses.field(default_factory=dict)  # task id -> why
    nowait: dict[str, float] = dataclasses.field(default_factory=dict)  # id -> when offered
    failed: set[str] = dataclasses.field(default_factory=set)  # ids with a failure line
    offered: int = 0
    refused: int = 0  # offered, and the producer was told so (None, an error, not 202)
    # Events HTTP ingest did not accept, by why: "<status> <error message>", or "no answer".
    http_refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    capture_max_s: float = 0.0  # slowest awaited capture
    accepted_at: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # producer ->

    def accept(self, event_id: str, producer: str) -> None:
        self.accepted[event_id] = producer
        self.accepted_at.setdefault(producer, []).append(time.monotonic())

    def longest_gap(self, producer: str, *, since: float, until: float) -> float:
        """The longest stretch in [since, until] in which `producer` had nothing accepted."""
        times = [t for t in self.accepted_at.get(producer, []) if since <= t <= until]
        edges = [since, *times, until]
        return max(b - a for a, b in itertools.pairwise(edges))

    def good_ids(self, *, offered_before: float | None = None) -> set[str]:
        """Accepted good events; capture_nowait's count unless a failure line named them."""
        ids = set(self.accepted)
        ids.update(
            i
            for i, at in self.nowait.items()
            if i not in self.failed and (offered_before is None or at <= offered_before)
        )
        return ids - self.poison.keys()

    def bad_ids(self) -> set[str]:
        """Accepted events that are bad on purpose: they belong in the dead letter."""
        nowait = {i for i in self.nowait if i not in self.failed}
        return {i for i in self.poison if i in self.accepted or i in nowait}


class FailureLines(logging.Handler):
    """Collect the event ids (entityId) of the producer's failure lines."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(logging.ERROR)
        self.ledger = ledger

    def emit(self, record: logging.LogRecord) -> None:
        payload = getattr(record, "audit_failure", None)
        if isinstance(payload, dict) and payload.get("entityId"):
            self.ledger.failed.add(str(payload["entityId"]))


@contextlib.contextmanager
def failure_lines(ledger: Ledger) -> Iterator[None]:
    handler = FailureLines(ledger)
    logger = logging.getLogger("auditq")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def good_event(producer: str) -> AuditEvent:
    """A valid event whose entity id is its own id, so a failure line names it."""
    event_id = new_event_id()
    return AuditEvent(
        id=event_id,
        action="invoice.paid",
        entity=Entity(type="invoice", id=str(event_id)),
        source=producer,
        metadata={"amount": 42, "note": "fault matrix"},
    )


def good_event_json(producer: str) -> dict[str, Any]:
    event_id = str(new_event_id())
    return {
        "id": event_id,
        "action": "invoice.paid",
        "entity": {"type": "invoice", "id": event_id},
        "source": producer,
    }


# --- Producers ---------------------------------------------------------------------------------


async def produce_capture(
    client: AuditClient,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    tasks: int = 3,
    pause: float = 0.02,
    name: str = "capture",
) -> None:
    """Awaited captures from `tasks` concurrent callers."""

    async def caller() -> None:
        while not stop.is_set():
            event = good_event(name)
            ledger.offered += 1
            started = time.monotonic()
            result = await client.capture(event)
            ledger.capture_max_s = max(ledger.capture_max_s, time.monotonic() - started)
            if result is None:
                ledger.refused += 1
            else:
                ledger.accept(result, name)
            await asyncio.sleep(pause)

    await asyncio.gather(*(caller() for _ in range(tasks)))


async def produce_nowait(
    client: AuditClient,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    per_tick: int = 10,
    tick: float = 0.04,
) -> None:
    """capture_nowait bursts; an event counts as accepted unless a failure line names it."""
    while not stop.is_set():
        for _ in range(per_tick):
            event = good_event("capture_nowait")
            ledger.offered += 1
            ledger.nowait[str(event.id)] = time.monotonic()
            client.capture_nowait(event)
        await asyncio.sleep(tick)


async def produce_lua(
    redis_url: str,
    queue: str,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    per_call: int = 20,
    tick: float = 0.1,
    extra: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:
    """EVALSHA enqueue.lua with arrays of events, as a producer in another language would."""
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    script = redis.register_script(ENQUEUE_SCRIPT)
    try:
        while not stop.is_set():
            events = [good_event_json("lua") for _ in range(per_call)]
            bad = extra() if extra is not None else []
            ledger.offered += len(events) + len(bad)
            try:
                await script(keys=[queue], args=[json.dumps(events + bad)])
            except Exception:
                ledger.refused += len(events) + len(bad)
            else:
                for event in events + bad:
                    ledger.accept(event["id"], "lua")
            await asyncio.sleep(tick)
    finally:
        await redis.aclose()


async def produce_http(
    base_url: str,
    token: str,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    per_post: int = 20,
    tick: float = 0.1,
    extra: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:
    """POST /api/v1/events batches; what came back 202 and `accepted` is accepted."""
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        while not stop.is_set():
            events = [good_event_json("http") for _ in range(per_post)]
            events += extra() if extra is not None else []
            ledger.offered += len(events)
            why = "no answer"
            try:
                async with session.post(f"{base_url}/api/v1/events", json={"events": events}) as r:
                    body = await r.json()
                    if r.status != 202:
                        why = f"{r.status} {body['error']['message']}"
                        body = None
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                body = None
            if body is None:
                ledger.refused += len(events)
                ledger.http_refused[why] += len(events)
            else:
                for event_id in body["accepted"]:
                    ledger.accept(event_id, "http")
                if body["rejected"]:
                    ledger.refused += len(body["rejected"])
                    ledger.http_refused["rejected"] += len(body["rejected"])
            await asyncio.sleep(tick)


class Load:
    """Producers running until `stop()`; what they were told lands in `ledger`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def run(self, producer: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(producer))

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self._tasks)


# --- Processes and servers ---------------------------------------------------------------------


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "AUDITQ_REDIS_URL": settings.redis_url or "",
        "AUDITQ_DATABASE_URL": settings.database_url or "",
        "AUDITQ_QUEUE": settings.queue,
        "AUDITQ_DATA_DIR": str(settings.data_dir),
        # The suite's servers' superuser, and the test's one seal key (a worker mints none).
        "AUDITQ_ALLOW_PRIVILEGED_ROLE": "1",
        "AUDITQ_SEAL_KEY_FILE": str(settings.seal_key_path),
    }
    load_or_create_private_key(settings.seal_key_path)
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def auditq_process(
    command: str, settings: Settings, log: Path, **extra: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Run `python -m service.cli.main <command>` as a child of this test; SIGTERM it at the end.

    Waited for in a thread: the test's loop may serve what the process needs to stop (a proxy).
    """
    proc = spawn(command, settings, log, **extra)
    try:
        yield proc
    finally:
        await asyncio.to_thread(stop_process, proc)


def spawn(command: str, settings: Settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """Start `python -m service.cli.main <command>` with the settings' URLs, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", command],
            env=process_env(settings, **extra),
            stdout=out,
            stderr=out,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def ingest_token(database_url: str) -> str:
    conn = await db.connect(database_url)
    try:
        # Stored directly: no token.created row among the rows the fault tests count.
        return await insert_token(conn, name=f"faults-{new_event_id()}", role="ingest")
    finally:
        await conn.close()


async def http_up(base_url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            async with session.get(f"{base_url}/healthz") as response:
                return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


# --- The reckoning -----------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    """One row of docs/reliability.md."""

    scenario: str
    accepted: int = 0
    stored: int = 0
    dead_lettered: int = 0
    duplicated: int = 0
    lost: int = 0
    drain_s: float | None = None
    notes: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)


async def _stored_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id::text AS id, count(*) AS n FROM audit_log GROUP BY id")
    finally:
        await conn.close()
    return {row["id"]: row["n"] for row in rows}


async def _dead_letters(redis: aioredis.Redis, queue: str) -> tuple[set[str], set[str]]:
    """Event ids and task ids in the dead letter."""
    event_ids: set[str] = set()
    task_ids: set[str] = set()
    for task_id in await dead_letter.list_ids(redis, queue):
        letter = await dead_letter.get(redis, queue, task_id)
        if letter is None:
            continue
        task_ids.add(task_id)
        payload = letter.payload if isinstance(letter.payload, list) else [letter.payload]
        for item in payload:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                event_ids.add(item["id"])
    return event_ids, task_ids


async def count_stored(database_url: str, ids: set[str]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(DISTINCT id) FROM audit_log WHERE id = ANY($1::uuid[])", list(ids)
        )
        return n
    finally:
        await conn.close()


class DrainWatch:
    """From the end of a fault: how long until every event accepted by then is stored."""

    def __init__(self, ledger: Ledger, database_url: str) -> None:
        self.ledger = ledger
        self.database_url = database_url
        self.seconds: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The fault is over now."""
        self._task = asyncio.ensure_future(self._watch(time.monotonic()))

    async def _watch(self, since: float) -> None:
        ids = self.ledger.good_ids(offered_before=since)
        deadline = since + SETTLE_WITHIN_S
        while time.monotonic() < deadline:
            ids -= self.ledger.failed  # a nowait event may still fail after the snapshot
            if await count_stored(self.database_url, ids) >= len(ids):
                self.seconds = time.monotonic() - since
                return
            await asyncio.sleep(POLL_S)

    async def result(self) -> float | None:
        if self._task is not None:
            await self._task
        return self.seconds


async def reckon(
    scenario: str,
    ledger: Ledger,
    *,
    database_url: str,
    redis: aioredis.Redis,
    queue: str,
    drain: DrainWatch | None = None,
    notes: str = "",
    within_s: float = SETTLE_WITHIN_S,
) -> Figures:
    """Wait (bounded) until every accepted event is where it belongs; count what is where."""
    good = ledger.good_ids()
    poison = ledger.bad_ids()
    started = time.monotonic()
    deadline = started + within_s
    while True:
        counts = await _stored_counts(database_url)
        dead_events, dead_tasks = await _dead_letters(redis, queue)
        missing = [i for i in good if i not in counts]
        unsettled = [i for i in poison if i not in dead_events and i not in counts]
        unsettled += [t for t in ledger.poison_tasks if t not in dead_tasks]
        if (not missing and not unsettled) or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S)
    drain_s = await drain.result() if drain is not None else time.monotonic() - started
    figures = Figures(
        scenario=scenario,
        accepted=len(good) + len(poison) + len(ledger.poison_tasks),
        stored=sum(1 for i in good if i in counts),
        dead_lettered=sum(1 for i in poison if i in dead_events)
        + sum(1 for t in ledger.poison_tasks if t in dead_tasks),
        duplicated=sum(1 for n in counts.values() if n > 1),
        lost=len(missing) + len(unsettled),
        drain_s=drain_s,
        notes=notes,
    )
    if figures.lost:
        figures.problems.append(
            f"{figures.lost} accepted events lost, e.g. {(missing or unsettled)[:3]}"
        )
    if figures.duplicated:
        figures.problems.append(f"{figures.duplicated} events stored more than once")
    if wrongly := [i for i in good if i in dead_events]:
        figures.problems.append(f"{len(wrongly)} good events in the dead letter")
    if stored_poison := [ledger.poison[i] for i in poison if i in counts]:
        figures.problems.append(f"bad events stored: {sorted(set(stored_poison))}")
    if not figures.accepted:
        figures.problems.append("no event was accepted: the scenario tested nothing")
    return figures


@contextlib.asynccontextmanager
async def api_in_process(settings: Settings) -> AsyncIterator[tuple[str, web.Application]]:
    """Serve the API (its HTTP ingest) from this process; yield its base URL and app."""
    from service.api.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


def start_producers(
    load: Load,
    client: AuditClient,
    *,
    redis_url: str,
    queue: str,
    http: tuple[str, str] | None = None,
    lua_extra: Callable[[], list[dict[str, Any]]] | None = None,
    http_extra: Callable[[], list[dict[str, Any]]] | None = None,
    http_tasks: int = 1,
) -> None:
    """The steady load: capture, capture_nowait, Lua and (with `http`) HTTP ingest."""
    ledger, stop = load.ledger, load.stopping
    load.run(produce_capture(client, ledger, stop))
    load.run(produce_nowait(client, ledger, stop))
    load.run(produce_lua(redis_url, queue, ledger, stop, extra=lua_extra))
    if http is not None:
        for _ in range(http_tasks):
            load.run(produce_http(*http, ledger, stop, extra=http_extra))


@contextlib.asynccontextmanager
async def producer_client(settings: Settings, **options: Any) -> AsyncIterator[AuditClient]:
    client = AuditClient.from_settings(dataclasses.replace(settings, **options))
    try:
        yield client
    finally:
        await client.aclose()
