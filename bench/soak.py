"""Soak: a steady producer load for N minutes while the worker is restarted every minute.

Usage: .venv/bin/python -m bench.soak --minutes 10 --rate 500 [--out bench/results/soak.md]

Starts its own embedded Valkey and PostgreSQL in a temporary directory, runs `auditq api` and
`auditq worker` as subprocesses (`python -m service.cli.main …` with the URLs in the environment),
and produces events at a fixed rate from this process: awaited `capture`, `capture_nowait`
and HTTP ingest. Every `--restart-every` seconds the worker gets SIGTERM and a new one starts.
Reported: producer, worker and API RSS at start and end (and the peak sampled), the queue lag
(the largest `oldest_queued_age_s` sampled from the API every second), and loss: the ids the
producers were told were accepted against the rows in PostgreSQL once the queue has drained.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from service.embedded.servers import EmbeddedStack, free_port
from service.events import Actor, Entity
from service.producer.client import AuditClient, AuditEvent
from service.store import db
from service.store.tokens import create_token

QUEUE = "soak"
SOURCE = "soak"
TICK_S = 0.02  # seconds between producer rounds
HTTP_TICK_S = 0.2  # seconds between HTTP ingest batches
SAMPLE_S = 1.0  # seconds between queue-stats and RSS samples
AWAITED_SHARE = 0.25  # of the rate: awaited capture
HTTP_SHARE = 0.05  # of the rate: HTTP ingest; the rest is capture_nowait
MAX_AWAITING = 500  # awaited captures in flight at once
WORKER_STOP_TIMEOUT_S = 45.0  # seconds a SIGTERMed worker gets before SIGKILL
DRAIN_TIMEOUT_S = 180.0  # seconds to wait for the queue to empty at the end
# Event ids carry a run prefix and a sequence number, so "accepted" is one byte per event.
_RUN_PREFIX = uuid.uuid4().int >> 80 << 80


def event_id(seq: int) -> uuid.UUID:
    value = _RUN_PREFIX | seq
    value = (value & ~(0xF << 76)) | (0x4 << 76)  # version 4: the ts comes from the event
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=value)


def seq_of(value: uuid.UUID) -> int:
    return value.int & ((1 << 62) - 1)


def make_event(seq: int, kind: str) -> AuditEvent:
    return AuditEvent(
        action=f"soak.{kind}",
        id=event_id(seq),
        ts=datetime.now(UTC),
        source=SOURCE,
        actor=Actor(id=f"user-{seq % 97}", type="user"),
        entity=Entity(type="document", id=str(seq % 1009)),
        metadata={"seq": seq, "kind": kind, "password": "hunter2"},
    )


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


@dataclasses.dataclass
class Tally:
    """What the producers sent and what they were told."""

    accepted: bytearray = dataclasses.field(default_factory=bytearray)
    attempted: int = 0
    awaited_ok: int = 0
    awaited_failed: int = 0
    nowait_sent: int = 0
    http_ok: int = 0
    http_failed: int = 0
    http_requests: int = 0
    behind_ticks: int = 0  # rounds where the producer could not keep the rate

    def next_seq(self) -> int:
        seq = self.attempted
        self.attempted += 1
        self.accepted.append(0)
        return seq


@dataclasses.dataclass
class Samples:
    max_lag_s: float = 0.0
    max_queued: int = 0
    stats_errors: int = 0
    peak_rss: dict[str, float] = dataclasses.field(default_factory=dict)

    def rss(self, name: str, value: float | None) -> None:
        if value is not None:
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), value)


class Proc:
    """One `auditq` subprocess, its log in the run directory."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.args, self.env, self.logdir = name, args, env, logdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.logdir / f"{self.name}-{self.starts}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> tuple[float, bool]:
        """SIGTERM, wait; SIGKILL past `timeout_s`. Return the seconds taken and if killed."""
        process = self.process
        if process is None or process.poll() is not None:
            return 0.0, False
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while process.poll() is None:
            if time.monotonic() - started > timeout_s:
                process.kill()
                process.wait()
                return time.monotonic() - started, True
            await asyncio.sleep(0.05)
        return time.monotonic() - started, False


async def produce(
    awaited: AuditClient,
    nowait: AuditClient,
    tally: Tally,
    rate: float,
    until: float,
) -> None:
    """Keep `rate` events/s through the two clients (the HTTP share runs apart)."""
    share = 1.0 - HTTP_SHARE
    awaiting: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(MAX_AWAITING)

    async def one_awaited(seq: int, event: AuditEvent) -> None:
        try:
            result = await awaited.capture(event)
        finally:
            gate.release()
        if result is None:
            tally.awaited_failed += 1
        else:
            tally.awaited_ok += 1
            tally.accepted[seq] = 1

    start = time.monotonic()
    done = 0
    while (now := time.monotonic()) < until:
        due = int((now - start) * rate * share) - done
        for _ in range(max(0, due)):
            seq = tally.next_seq()
            if (seq % 100) < AWAITED_SHARE * 100 / share:
                await gate.acquire()
                task = asyncio.create_task(one_awaited(seq, make_event(seq, "awaited")))
                awaiting.add(task)
                task.add_done_callback(awaiting.discard)
            else:
                nowait.capture_nowait(make_event(seq, "nowait"))
                tally.accepted[seq] = 1  # unless the client reports it failed (counted)
                tally.nowait_sent += 1
        done += max(0, due)
        elapsed = time.monotonic() - now
        if elapsed > TICK_S:
            tally.behind_ticks += 1
        await asyncio.sleep(max(0.0, TICK_S - elapsed))
    if awaiting:
        await asyncio.gather(*awaiting)


async def ingest_http(
    session: aiohttp.ClientSession, api: str, token: str, tally: Tally, rate: float, until: float
) -> None:
    """Send the HTTP share of the rate as {"events": [...]} batches."""
    headers = {"Authorization": f"Bearer {token}"}
    start = time.monotonic()
    done = 0
    while (now := time.monotonic()) < until:
        due = int((now - start) * rate * HTTP_SHARE) - done
        if due > 0:
            seqs = [tally.next_seq() for _ in range(due)]
            body = {
                "events": [
                    {
                        "action": "soak.http",
                        "id": str(event_id(s)),
                        "ts": datetime.now(UTC).isoformat(),
                        "source": SOURCE,
                        "metadata": {"seq": s, "api_key": "sk-soak"},
                    }
                    for s in seqs
                ]
            }
            done += due
            tally.http_requests += 1
            try:
                async with session.post(f"{api}/api/v1/events", json=body, headers=headers) as r:
                    result = await r.json() if r.status == 202 else None
            except (aiohttp.ClientError, TimeoutError):
                result = None
            if result is None:
                tally.http_failed += len(seqs)
            else:
                for value in result["accepted"]:
                    tally.accepted[seq_of(uuid.UUID(value))] = 1
                tally.http_ok += len(result["accepted"])
                tally.http_failed += len(result["rejected"])
        await asyncio.sleep(max(0.0, HTTP_TICK_S - (time.monotonic() - now)))


async def queue_stats(
    session: aiohttp.ClientSession, api: str, token: str
) -> dict[str, Any] | None:
    try:
        async with session.get(
            f"{api}/api/v1/admin/queue/stats", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            if response.status != 200:
                return None
            body: dict[str, Any] = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None


async def sample(
    session: aiohttp.ClientSession,
    api: str,
    token: str,
    samples: Samples,
    procs: dict[str, Proc],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        stats = await queue_stats(session, api, token)
        if stats is None:
            samples.stats_errors += 1
        else:
            samples.max_lag_s = max(samples.max_lag_s, float(stats["oldest_queued_age_s"]))
            samples.max_queued = max(samples.max_queued, int(stats["counts"]["queued"]))
        samples.rss("producer", rss_mb(os.getpid()))
        for name, proc in procs.items():
            samples.rss(name, rss_mb(proc.pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def wait_ready(session: aiohttp.ClientSession, api: str, proc: Proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{api}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("the API did not become ready within 60 s")


async def drain(
    session: aiohttp.ClientSession, api: str, token: str, database_url: str, expected: int
) -> tuple[float, int]:
    """Wait until nothing is queued, in progress or retrying; return seconds and rows."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        rows = 0
        while time.monotonic() - started < DRAIN_TIMEOUT_S:
            stats = await queue_stats(session, api, token)
            rows = int(
                await conn.fetchval("SELECT count(*) FROM audit_log WHERE source = $1", SOURCE)
            )
            if stats is not None:
                counts = stats["counts"]
                idle = counts["queued"] + counts["in_progress"] + counts["retrying"] == 0
                if idle and rows >= expected:
                    break
            await asyncio.sleep(0.5)
        return time.monotonic() - started, rows
    finally:
        await conn.close()


async def run(minutes: float, rate: float, restart_every_s: float) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="auditq-soak-"))
    stack = EmbeddedStack(workdir / "servers")
    await asyncio.to_thread(stack.start)
    procs: dict[str, Proc] = {}
    try:
        stack.postgres.create_database("soak")
        database_url = stack.postgres.url_for("soak")
        await db.migrate(database_url)
        conn = await db.connect(database_url)
        admin_token = await create_token(conn, name="soak-admin", role="admin")
        ingest_token = await create_token(conn, name="soak-ingest", role="ingest")
        await conn.close()
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "AUDITQ_REDIS_URL": stack.valkey.url,
            "AUDITQ_DATABASE_URL": database_url,
            "AUDITQ_DATA_DIR": str(workdir / "data"),
            "AUDITQ_QUEUE": QUEUE,
            "AUDITQ_HTTP_PORT": str(port),
            "AUDITQ_LOG_LEVEL": "WARNING",
        }
        logdir = workdir / "logs"
        logdir.mkdir()
        procs["api"] = Proc("api", ["api"], env, logdir)
        procs["worker"] = Proc("worker", ["worker"], env, logdir)
        for proc in procs.values():
            proc.start()

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_ready(session, api, procs["api"])
            awaited = AuditClient.from_url(stack.valkey.url, queue=QUEUE)
            nowait = AuditClient.from_url(stack.valkey.url, queue=QUEUE)
            # Warm up (connections, first batches) before the start figures are read.
            await awaited.capture(AuditEvent(action="soak.warmup", source="warmup"))
            await asyncio.sleep(2)
            rss_start = {
                "producer": rss_mb(os.getpid()),
                **{name: rss_mb(p.pid) for name, p in procs.items()},
            }
            tally = Tally()
            samples = Samples()
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(
                sample(session, api, admin_token, samples, procs, stop_sampling)
            )
            began = time.monotonic()
            until = began + minutes * 60
            restarts: list[tuple[float, bool]] = []
            worker_rss_before_stop: list[float] = []

            async def restarter() -> None:
                while time.monotonic() + restart_every_s < until:
                    await asyncio.sleep(restart_every_s)
                    before = rss_mb(procs["worker"].pid)
                    if before is not None:
                        worker_rss_before_stop.append(before)
                    restarts.append(await procs["worker"].stop())
                    procs["worker"].start()

            restarting = asyncio.create_task(restarter())
            await asyncio.gather(
                produce(awaited, nowait, tally, rate, until),
                ingest_http(session, api, ingest_token, tally, rate, until),
            )
            produced_s = time.monotonic() - began
            await restarting
            await awaited.aclose()
            await nowait.aclose()
            rss_end_producer = rss_mb(os.getpid())
            nowait_failed = nowait.failed + nowait.dropped
            expected = sum(tally.accepted) - nowait_failed
            drain_s, rows = await drain(session, api, admin_token, database_url, expected)
            stop_sampling.set()
            await sampler
            rss_end = {
                "producer": rss_end_producer,
                **{name: rss_mb(p.pid) for name, p in procs.items()},
            }
            final = await queue_stats(session, api, admin_token) or {}

        conn = await asyncpg.connect(database_url)
        try:
            ids = await conn.fetch("SELECT id FROM audit_log WHERE source = $1", SOURCE)
            duplicates = len(ids) - len({r["id"] for r in ids})
        finally:
            await conn.close()
        stored = bytearray(tally.attempted)
        for record in ids:
            stored[seq_of(record["id"])] = 1
        missing = sum(1 for a, s in zip(tally.accepted, stored, strict=True) if a and not s)
        unaccepted_stored = sum(
            1 for a, s in zip(tally.accepted, stored, strict=True) if s and not a
        )
        report = render(
            minutes=minutes,
            rate=rate,
            restart_every_s=restart_every_s,
            produced_s=produced_s,
            tally=tally,
            nowait_failed=nowait_failed,
            samples=samples,
            rss_start=rss_start,
            rss_end=rss_end,
            restarts=restarts,
            worker_rss_before_stop=worker_rss_before_stop,
            drain_s=drain_s,
            rows=rows,
            missing=missing,
            unaccepted_stored=unaccepted_stored,
            duplicates=duplicates,
            final=final,
        )
        return report
    finally:
        for proc in procs.values():
            await proc.stop(timeout_s=30)
        await asyncio.to_thread(stack.stop)
        stack.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def render(
    *,
    minutes: float,
    rate: float,
    restart_every_s: float,
    produced_s: float,
    tally: Tally,
    nowait_failed: int,
    samples: Samples,
    rss_start: dict[str, float | None],
    rss_end: dict[str, float | None],
    restarts: list[tuple[float, bool]],
    worker_rss_before_stop: list[float],
    drain_s: float,
    rows: int,
    missing: int,
    unaccepted_stored: int,
    duplicates: int,
    final: dict[str, Any],
) -> str:
    accepted = sum(tally.accepted) - nowait_failed
    counts = final.get("counts", {})
    stop_times = ", ".join(f"{s:.1f}" for s, _ in restarts) or "none"
    killed = sum(1 for _, k in restarts if k)
    lines = [
        "# Soak",
        "",
        f"Finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"`python -m bench.soak --minutes {minutes:g} --rate {rate:g}`, "
        f"worker SIGTERMed and restarted every {restart_every_s:g} s; "
        f"{os.cpu_count()} CPUs; embedded Valkey and PostgreSQL; API and worker as subprocesses.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events offered | {tally.attempted:,} in {produced_s:.0f} s "
        f"({tally.attempted / produced_s:.0f}/s) |",
        f"| awaited `capture` | {tally.awaited_ok:,} ok, {tally.awaited_failed:,} returned None |",
        f"| `capture_nowait` | {tally.nowait_sent:,} buffered, {nowait_failed:,} failed or "
        "dropped (client counters) |",
        f"| HTTP ingest | {tally.http_ok:,} accepted in {tally.http_requests:,} requests, "
        f"{tally.http_failed:,} refused/failed |",
        f"| producer rounds behind the rate | {tally.behind_ticks} |",
        f"| accepted (promised to producers) | {accepted:,} |",
        f"| rows in PostgreSQL after draining | {rows:,} (drained {drain_s:.1f} s after the "
        "producers stopped) |",
        f"| **lost** (accepted, not stored) | **{missing:,}** |",
        f"| stored although not reported accepted | {unaccepted_stored:,} |",
        f"| duplicate ids in PostgreSQL | {duplicates:,} |",
        f"| dead-lettered tasks at the end | {counts.get('failed', 'n/a')} |",
        f"| max queue lag (`oldest_queued_age_s`, 1 s samples) | {samples.max_lag_s:.2f} s |",
        f"| max queued tasks sampled | {samples.max_queued:,} |",
        f"| queue-stats samples that failed | {samples.stats_errors} |",
        f"| worker restarts (SIGTERM → exit, s) | {len(restarts)}: {stop_times}"
        f"{f'; {killed} needed SIGKILL' if killed else ''} |",
    ]
    lines += ["", "| process | RSS at start | RSS at end | peak sampled |", "|---|---|---|---|"]
    for name in ("producer", "api", "worker"):
        note = " (latest worker process)" if name == "worker" else ""
        lines.append(
            f"| {name}{note} | {_mb(rss_start.get(name))} | {_mb(rss_end.get(name))} | "
            f"{_mb(samples.peak_rss.get(name))} |"
        )
    if worker_rss_before_stop:
        lines.append(
            "| each worker process just before its SIGTERM | "
            + ", ".join(f"{v:.0f}" for v in worker_rss_before_stop)
            + " MB | | |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--restart-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(run(args.minutes, args.rate, args.restart_every))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
