"""A producer process: awaited captures from concurrent tasks, timed one by one.

    python -m bench.producer auditq|arq REDIS_URL RUN COUNT CONCURRENCY RATE OUT_JSON [--nowait N]
    python -m bench.producer compare [--baseline REV] [--events N] [--rounds R] [--redis-url URL]

auditq: `AuditClient.capture` with the client's defaults. arq: one `enqueue_job` per event
(the one-job-per-event design on arq). RATE 0 runs flat out; otherwise events/s, paced.
`--nowait N` (auditq) then times N `capture_nowait` calls (their CPU alone) and flushes them.

compare: the producer's CPU per event now and at git revision REV (default `main`), loaded
side by side in this one process (bench/common.py `load_baseline`) and timed alternately,
round after round, so both see the same load; best round of each, and now / baseline:
`capture_nowait` µs per call (the calls alone, no context, nothing sent), the same without
the redaction pre-check (the difference: what redaction adds to a clean event), and awaited
`capture` CPU µs per event with 64 concurrent callers inside a request's audit context,
against a Valkey of its own (or URL). CPU is this process's (`time.process_time`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import json
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import event_fields, load_baseline
from service import events as events_module
from service.events import AuditEvent
from service.producer.client import AuditClient

NOWAIT_CHUNK = 1000  # calls between two yields to the loop, so the sender can drain the buffer


def audit_event(run: str, i: int, events: ModuleType = events_module) -> AuditEvent:
    """The benchmark event as a service builds one: with the Struct constructors (of
    `events`, service.events or a baseline's)."""
    e = event_fields(run, i)
    event: AuditEvent = events.AuditEvent(
        action=e["action"],
        actor=events.Actor(**e["actor"]),
        entity=events.Entity(**e["entity"]),
        tenant=e["tenant"],
        request=events.RequestInfo(**e["request"]),
        changes=[events.Change(**c) for c in e["changes"]],
        metadata=e["metadata"],
        source=e["source"],
    )
    return event


async def drive(
    capture: Callable[[int], Awaitable[object]], count: int, concurrency: int, rate: float
) -> tuple[float, float, list[float]]:
    latencies = [0.0] * count
    position = 0
    started = time.time()
    t0 = time.perf_counter()

    async def loop() -> None:
        nonlocal position
        while position < count:
            i = position
            position += 1
            if rate > 0:
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            t = time.perf_counter()
            await capture(i)
            latencies[i] = (time.perf_counter() - t) * 1000

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return started, time.perf_counter() - t0, latencies


async def run_auditq(args: argparse.Namespace) -> dict[str, Any]:
    client = AuditClient.from_url(args.redis_url)
    failed = 0

    async def capture(i: int) -> None:
        nonlocal failed
        if await client.capture(audit_event(args.run, i)) is None:
            failed += 1

    floor = asyncio.create_task(probe_floor(args.redis_url)) if args.rate > 0 else None
    started, elapsed, latencies = await drive(capture, args.count, args.concurrency, args.rate)
    result: dict[str, Any] = {"started_at": started, "elapsed_s": elapsed, "failed": failed}
    result["latencies_ms"] = latencies
    if floor is not None:
        floor.cancel()
        result["floor_ms"] = await floor
    if args.nowait:
        events = [audit_event(f"{args.run}-nowait", i) for i in range(args.nowait)]
        spent = 0.0
        for start in range(0, len(events), NOWAIT_CHUNK):
            chunk = events[start : start + NOWAIT_CHUNK]
            t = time.process_time()  # CPU: the machine's other processes take turns
            for event in chunk:
                client.capture_nowait(event)
            spent += time.process_time() - t
            await asyncio.sleep(0.002)
        result["nowait_us_per_call"] = spent / len(events) * 1e6
    await client.aclose()
    result["failed"] += client.failed + client.dropped
    return result


PROBE_EVERY_S = 0.01


async def probe_floor(redis_url: str) -> dict[str, list[float]]:
    """Where a paced capture's time goes beyond auditq's code: at the same moments, in this
    process, the event loop's lag (a 10 ms sleep's overshoot) and a bare Redis PING's round
    trip. Runs until cancelled; returns both series in ms."""
    import redis.asyncio as aioredis

    lags: list[float] = []
    pings: list[float] = []
    client = aioredis.Redis.from_url(redis_url)
    try:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(PROBE_EVERY_S)
            lags.append((time.perf_counter() - t - PROBE_EVERY_S) * 1000)
            t = time.perf_counter()
            await client.ping()
            pings.append((time.perf_counter() - t) * 1000)
    except asyncio.CancelledError:
        return {"loop_lag": lags, "redis_ping": pings}
    finally:
        await client.aclose()


async def run_arq(args: argparse.Namespace) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(args.redis_url))

    async def capture(i: int) -> None:
        event = event_fields(args.run, i)
        event["id"] = str(uuid.uuid4())
        event["ts"] = datetime.now(UTC).isoformat()
        await pool.enqueue_job("store_event", event)

    started, elapsed, latencies = await drive(capture, args.count, args.concurrency, args.rate)
    await pool.aclose()
    return {"started_at": started, "elapsed_s": elapsed, "failed": 0, "latencies_ms": latencies}


def usage() -> dict[str, float]:
    """CPU seconds and peak RSS (KiB) of this process so far."""
    self = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": self.ru_utime + self.ru_stime, "peak_rss_kib": self.ru_maxrss}


# Comparing the producer's CPU now and at a baseline revision, in one process.

DEAD_REDIS = "redis://127.0.0.1:9/0"  # capture_nowait alone: the sender never gets to run


@dataclasses.dataclass
class Side:
    """One version of the producer: its events, context and client modules."""

    name: str
    events: ModuleType
    context: ModuleType
    client: ModuleType
    rounds: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, name: str, package: str) -> Side:
        def module(path: str) -> ModuleType:
            return importlib.import_module(f"{package}.{path}")

        return cls(name, module("events"), module("producer.context"), module("producer.client"))

    def record(self, figure: str, value: float) -> None:
        self.rounds.setdefault(figure, []).append(value)

    def best(self, figure: str) -> float:
        return min(self.rounds[figure])


@contextlib.contextmanager
def without_redaction(events: ModuleType) -> Iterator[None]:
    """The redaction pre-check of `events` answers "nothing to redact", at no cost (a
    baseline's `events` may call it may_hold_secret_json or json_precheck, the current one
    json_matches)."""
    nothing: object
    if hasattr(events, "json_matches"):
        name, nothing = "json_matches", None
    elif hasattr(events, "json_precheck"):
        name, nothing = "json_precheck", (False, False)
    else:
        name, nothing = "may_hold_secret_json", False
    saved = getattr(events, name)
    setattr(events, name, lambda data, extra_keys=frozenset(), whole=True: nothing)
    try:
        yield
    finally:
        setattr(events, name, saved)


NOWAIT_SLICE = 500  # calls timed at a stretch before the next variant's turn


async def nowait_us(sides: list[Side], batches: dict[str, list[AuditEvent]]) -> None:
    """Record each side's CPU µs of one capture_nowait call, with and without the redaction
    pre-check: the calls alone, buffered and never sent, every variant timed in turn, a
    slice of calls at a time, so that all four meet the same moments of the machine's load."""
    variants = [(side, bare) for side in sides for bare in (False, True)]
    clients = [
        side.client.AuditClient.from_url(DEAD_REDIS, queue="bench-cpu") for side, _ in variants
    ]
    spent = [0.0] * len(variants)
    count = len(next(iter(batches.values())))
    for turn, start in enumerate(range(0, count, NOWAIT_SLICE)):
        for shifted in range(len(variants)):
            index = (turn + shifted) % len(variants)
            side, bare = variants[index]
            client = clients[index]
            batch = batches[side.name][start : start + NOWAIT_SLICE]
            with without_redaction(side.events) if bare else contextlib.nullcontext():
                began = time.process_time()
                for event in batch:
                    client.capture_nowait(event)
                spent[index] += time.process_time() - began
            client._buffer.clear()  # as the sender would: a growing heap is the GC's work
    for (side, bare), client, seconds in zip(variants, clients, spent, strict=True):
        await client.aclose(timeout_s=0.01)
        side.record("nowait_bare" if bare else "nowait", seconds / count * 1e6)


async def capture_us(side: Side, batch: list[AuditEvent], redis_url: str, callers: int) -> float:
    """CPU µs per event of awaited captures from `callers` concurrent tasks, each inside a
    request's audit context (the merge runs), sent to Redis and confirmed."""
    client = side.client.AuditClient.from_url(redis_url, queue=f"bench-cpu-{side.name}")
    context = side.context.AuditContext(
        request_id="req-ctx",
        ip="198.51.100.4",
        user_agent="bench/ctx",
        method="GET",
        path="/ctx",
        actor=side.events.Actor(id="ctx-user", type="user"),
    )
    position = 0
    failed = 0

    async def caller() -> None:
        nonlocal position, failed
        side.context.audit_context.set(context)
        while position < len(batch):
            event = batch[position]
            position += 1
            if await client.capture(event) is None:
                failed += 1

    for _ in range(2):  # the first pass connects and loads the script: not timed
        position = 0
        started = time.process_time()
        await asyncio.gather(*(caller() for _ in range(callers)))
        spent = time.process_time() - started
    await client.aclose()
    if failed:
        raise RuntimeError(f"{side.name}: {failed} captures failed")
    return spent / len(batch) * 1e6


def compare(args: argparse.Namespace) -> None:
    logging.getLogger("auditq").setLevel(logging.CRITICAL)  # the never-sent events' lines
    baseline = Side.load(f"baseline {args.baseline}", load_baseline(args.baseline))
    now = Side.load("now", "service")
    stack_dir: Path | None = None
    redis_url = args.redis_url
    if redis_url is None:
        from service.embedded.servers import EmbeddedValkey

        stack_dir = Path(tempfile.mkdtemp(prefix="auditq-bench-cpu-"))
        valkey = EmbeddedValkey(stack_dir / "valkey")
        valkey.start()
        redis_url = valkey.url
    try:
        sides = [baseline, now]
        batches = {
            side.name: [audit_event("cpu", i, side.events) for i in range(args.events)]
            for side in sides
        }
        gc.collect()
        gc.freeze()  # the batches stay to the end: no collection need walk them
        for index in range(args.rounds):
            asyncio.run(nowait_us(sides, batches))
            # Alternate who goes first, so neither always meets the same moment of the load.
            for side in sides if index % 2 == 0 else sides[::-1]:
                batch = batches[side.name]
                side.record("capture", asyncio.run(capture_us(side, batch, redis_url, 64)))
    finally:
        if stack_dir is not None:
            with contextlib.suppress(Exception):
                valkey.stop()
            shutil.rmtree(stack_dir, ignore_errors=True)
    print(f"best of {args.rounds} rounds of {args.events} events, CPU µs; now / baseline")
    rows = (
        ("capture_nowait (µs/call)", "nowait"),
        ("  without the redaction pre-check", "nowait_bare"),
        ("capture, 64 callers (µs/event)", "capture"),
    )
    print(f"{'':36}{baseline.name:>18}{'now':>10}{'ratio':>8}")
    for label, figure in rows:
        old, new = baseline.best(figure), now.best(figure)
        print(f"{label:36}{old:18.2f}{new:10.2f}{new / old:8.2f}")
    old = statistics.median(a - b for a, b in _pairs(baseline))
    new = statistics.median(a - b for a, b in _pairs(now))
    print(f"{'redaction of a clean event (µs)':36}{old:18.2f}{new:10.2f}   (median of rounds)")
    if args.json:
        result = {side.name: side.rounds for side in (baseline, now)}
        Path(args.json).write_text(json.dumps(result, indent=1))


def _pairs(side: Side) -> list[tuple[float, float]]:
    return list(zip(side.rounds["nowait"], side.rounds["nowait_bare"], strict=True))


def compare_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.producer compare")
    parser.add_argument("--baseline", default="main", help="git revision (default: main)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", help="default: a Valkey of its own")
    parser.add_argument("--json", help="write every round's figures here")
    compare(parser.parse_args(argv))


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        compare_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=("auditq", "arq"))
    parser.add_argument("redis_url")
    parser.add_argument("run")
    parser.add_argument("count", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("out")
    parser.add_argument("--nowait", type=int, default=0)
    args = parser.parse_args()
    runner = run_auditq if args.system == "auditq" else run_arq
    result = asyncio.run(runner(args))
    result.update(usage())
    with open(args.out, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
