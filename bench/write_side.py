"""The write side: each system on fresh servers, a producer process against its worker(s).

For each system: a warm-up, then
1. end-to-end latency at a steady 2,000 events/s: received_at (the writing transaction's
   start) minus ts (set at capture) of each row, and the awaited captures' latency;
2. throughput: COUNT events from CONCURRENCY concurrent awaited captures, clock from the first
   capture until the last row is visible; capture latency of every call; CPU of the producer,
   the worker(s), PostgreSQL and Valkey over that phase;
3. auditq only: the cost of one capture_nowait call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import (
    ROOT,
    VENV_BIN,
    Stack,
    count_rows,
    cpu_seconds,
    memory_kib,
    percentile,
    wait_for_rows,
)

NODE_DIR = ROOT / "bench" / "node"
E2E_RATE = 2000  # events/s
CONCURRENCY = 64  # concurrent awaited captures: a busy service's requests in flight
PY = str(VENV_BIN / "python")


@dataclasses.dataclass
class Sizes:
    warmup: int
    e2e_seconds: float
    nowait: int
    counts: dict[str, int]


FULL = Sizes(
    warmup=2_000,
    e2e_seconds=15,
    nowait=100_000,
    counts={"testplanit": 40_000, "arq_per_event": 15_000, "auditq": 200_000},
)
QUICK = Sizes(
    warmup=1_000,
    e2e_seconds=5,
    nowait=20_000,
    counts={"testplanit": 8_000, "arq_per_event": 4_000, "auditq": 40_000},
)


@dataclasses.dataclass
class System:
    name: str
    label: str
    kind: str  # which producer and worker: testplanit, arq_per_event, auditq
    workers: int = 1


SYSTEMS = [
    System(
        "testplanit",
        "TestPlanIt's design (Node BullMQ, 1 job + 1 INSERT per event)",
        "testplanit",
    ),
    System("arq_per_event", "arq, 1 job + 1 INSERT per event", "arq_per_event"),
    System("auditq_1_worker", "auditq, 1 worker process", "auditq", 1),
    System("auditq_2_workers", "auditq, 2 worker processes", "auditq", 2),
]


def _node() -> str:
    return os.environ.get("NODE", "node")


def start_workers(
    system: System, stack: Stack, logs: Path, **env: str
) -> list[subprocess.Popen[bytes]]:
    """Start the system's worker processes; `env`: settings of their own (auditq's)."""
    procs = []
    for n in range(system.workers):
        log = open(logs / f"{system.name}-worker-{n}.log", "wb")
        if system.kind == "testplanit":
            cmd = [
                _node(),
                str(NODE_DIR / "testplanit.mjs"),
                "worker",
                stack.redis_url,
                stack.database_url,
            ]
        elif system.kind == "arq_per_event":
            cmd = [PY, "-m", "bench.arq_per_event", stack.redis_url, stack.database_url]
        else:
            cmd = [str(VENV_BIN / "auditq"), "worker"]
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=stack.env(**env), cwd=ROOT
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """SIGTERM each worker (started here), wait, and return its whole-life peak RSS."""
    peak = 0
    for proc in procs:
        peak = max(peak, memory_kib(proc.pid, "VmHWM"))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"worker_peak_rss_mib": peak / 1024}


def producer_cmd(
    system: System, stack: Stack, run: str, count: int, rate: float, out: Path, nowait: int = 0
) -> list[str]:
    if system.kind == "testplanit":
        return [
            _node(),
            str(NODE_DIR / "testplanit.mjs"),
            "produce",
            stack.redis_url,
            run,
            str(count),
            str(CONCURRENCY),
            str(rate),
            str(out),
        ]
    kind = "auditq" if system.kind == "auditq" else "arq"
    cmd = [PY, "-m", "bench.producer", kind, stack.redis_url, run, str(count)]
    cmd += [str(CONCURRENCY), str(rate), str(out)]
    if nowait:
        cmd += ["--nowait", str(nowait)]
    return cmd


async def produce_and_wait(
    conn: asyncpg.Connection,
    cmd: list[str],
    out: Path,
    expected_rows: int,
    log: Path,
    *,
    on_start: Callable[[], None] | None = None,
    timeout_s: float = 600,
) -> tuple[dict[str, Any], float]:
    """Run a producer; return its report and the wall time all `expected_rows` were visible."""
    # The benchmark's own bookkeeping blocks for a moment, outside any measured interval.
    with open(log, "ab") as log_file:  # noqa: ASYNC230
        producer = subprocess.Popen(  # noqa: ASYNC220
            cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )
    if on_start:
        on_start()

    def alive() -> None:
        if producer.poll() not in (None, 0):
            raise RuntimeError(f"producer failed ({producer.returncode}): see {log}")

    deadline = time.monotonic() + timeout_s
    try:
        visible_at = await wait_for_rows(conn, expected_rows, timeout_s=timeout_s, check=alive)
        while producer.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    if visible_at is None:
        raise TimeoutError(f"{expected_rows} rows not visible within {timeout_s} s")
    report: dict[str, Any] = json.loads(out.read_text())  # noqa: ASYNC240
    return report, visible_at


def _worker_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    return sum(cpu_seconds(p.pid) for p in procs)


# Seconds for the workers' last bookkeeping (a result, a stream entry) after the last row.
SETTLE_S = 2.0


async def measure(system: System, sizes: Sizes, logs: Path) -> dict[str, Any]:
    count = sizes.counts[system.kind]
    result: dict[str, Any] = {"label": system.label, "events": count}
    with Stack() as stack:
        await stack.migrate()
        procs = start_workers(system, stack, logs)
        redis_before = await stack.redis_used_memory()
        conn = await asyncpg.connect(stack.database_url)
        try:
            work = stack.dir / "out"
            work.mkdir()
            plog = logs / f"{system.name}-producer.log"
            # Warm-up: connections made, code paths hot, the worker surely polling.
            out = work / "warmup.json"
            cmd = producer_cmd(system, stack, "warmup", sizes.warmup, 0, out)
            await produce_and_wait(conn, cmd, out, sizes.warmup, plog, timeout_s=300)
            expected = sizes.warmup

            # 1. End-to-end latency at a steady rate (before the bulk phase: after it, PostgreSQL's
            # autovacuum of what it wrote would be measured too).
            e2e_count = int(E2E_RATE * sizes.e2e_seconds)
            out = work / "e2e.json"
            cmd = producer_cmd(system, stack, "e2e", e2e_count, E2E_RATE, out)
            expected += e2e_count
            report, _ = await produce_and_wait(conn, cmd, out, expected, plog)
            lags = [
                float(r[0])
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM received_at - ts) * 1000 FROM audit_log "
                    "WHERE source = 'e2e'"
                )
            ]
            steady = report["latencies_ms"]
            result["e2e_ms_at_2000"] = {
                "p50": percentile(lags, 50),
                "p99": percentile(lags, 99),
                "max": max(lags),
                "achieved_rate_eps": e2e_count / report["elapsed_s"],
            }
            result["capture_ms_at_2000"] = {
                "p50": percentile(steady, 50),
                "p99": percentile(steady, 99),
                "p99.9": percentile(steady, 99.9),
            }
            if "floor_ms" in report:  # the same moments' loop lag and bare Redis round trip
                result["floor_ms_at_2000"] = {
                    name: {"p50": percentile(series, 50), "p99": percentile(series, 99)}
                    for name, series in report["floor_ms"].items()
                }

            # 2. Throughput, capture latency, CPU.
            out = work / "throughput.json"
            cmd = producer_cmd(system, stack, "throughput", count, 0, out)
            before: dict[str, float] = {}

            def snapshot() -> None:
                before.update(stack.server_cpu(), worker=_worker_cpu(procs))

            expected += count
            report, visible_at = await produce_and_wait(
                conn, cmd, out, expected, plog, on_start=snapshot
            )
            after = dict(stack.server_cpu(), worker=_worker_cpu(procs))
            elapsed = visible_at - report["started_at"]
            latencies = report["latencies_ms"]
            per_10k = 10_000 / count
            result.update(
                throughput_eps=count / elapsed,
                elapsed_s=elapsed,
                capture_ms={
                    "p50": percentile(latencies, 50),
                    "p99": percentile(latencies, 99),
                    "p99.9": percentile(latencies, 99.9),
                    "max": max(latencies),
                },
                cpu_s_per_10k={
                    name: (after[name] - before[name]) * per_10k
                    for name in ("worker", "postgres", "valkey")
                }
                | {"producer": report["cpu_s"] * per_10k},
                producer_peak_rss_mib=report["peak_rss_kib"] / 1024,
                capture_failed=report["failed"],
            )

            # 3. capture_nowait, last: the cost of one call (the events are then stored too).
            if system.kind == "auditq":
                out = work / "nowait.json"
                cmd = producer_cmd(system, stack, "nowait", 0, 0, out, sizes.nowait)
                expected += sizes.nowait
                report, _ = await produce_and_wait(conn, cmd, out, expected, plog)
                result["capture_nowait_us"] = report["nowait_us_per_call"]
            stored = await count_rows(conn)
            duplicates = await conn.fetchval("SELECT count(*) - count(DISTINCT id) FROM audit_log")
            # What the queue keeps once every event is stored (results, completed jobs, logs).
            await asyncio.sleep(SETTLE_S)
            grown = await stack.redis_used_memory() - redis_before
            result["redis_bytes_per_stored_event"] = max(grown, 0) / stored
            result["rows_stored"] = stored
            result["duplicate_ids"] = duplicates
        finally:
            await conn.close()
            result.update(stop_workers(procs))
    return result


async def run_all(
    sizes: Sizes, logs: Path, only: set[str] | None = None, rounds: int = 1
) -> dict[str, Any]:
    """Measure every system `rounds` times, round-robin (so a busy spell of the machine hits
    all of them alike); keep for each the round of median throughput, whole."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_number in range(1, rounds + 1):
        for system in SYSTEMS:
            if only and system.name not in only:
                continue
            print(
                f"  write side, round {round_number}/{rounds}: {system.name} …",
                file=sys.stderr,
                flush=True,
            )
            r = await measure(system, sizes, logs)
            runs.setdefault(system.name, []).append(r)
            print(
                f"    {r['throughput_eps']:,.0f} events/s, "
                f"capture p99 {r['capture_ms']['p99']:.2f} ms, "
                f"e2e p99 {r['e2e_ms_at_2000']['p99']:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    results = {}
    for name, measured in runs.items():
        ranked = sorted(measured, key=lambda r: r["throughput_eps"])
        median = dict(ranked[(len(ranked) - 1) // 2])
        median["throughput_eps_rounds"] = [r["throughput_eps"] for r in measured]
        results[name] = median
    return results
