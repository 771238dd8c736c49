"""CPU per event of the worker's job and of PostgreSQL, two code trees side by side.

Usage: .venv/bin/python -m bench.worker_cpu [--tree OLD_TREE] [--rounds 5] [--jobs 20]
       [--per-job 1000] [--kind client|foreign]

Each round runs, in turn and on the same embedded servers, one child process per tree
(default: a snapshot of `main` and this tree), each with its own database migrated from its
own schema.sql. A child calls the job function (workers/job.py: store_events) directly with
jobs the way auditq's Python client makes them (`client`: finalized events) or a foreign
producer does (`foreign`: the bare events), and a bare COPY of the same rows into the same
table. It reports CPU seconds from /proc: its own (the worker's, around the job calls only)
and its PostgreSQL backend's (the statements alone, no autovacuum or WAL writer). The
medians of the rounds are printed; compare trees within one run, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _event(run: str, i: int) -> dict[str, Any]:
    sys.path.append(str(ROOT))  # bench.common of this tree, whatever tree is imported first
    from bench.common import event_fields

    return event_fields(run, i)


async def child(args: argparse.Namespace) -> None:
    import asyncpg
    import msgspec
    import redis.asyncio as aioredis

    from service.events import AuditEvent, finalize
    from service.settings import Settings
    from service.store import db
    from service.store.partitions import ensure_partitions
    from workers import job as job_module
    from workers.erased import ErasedSubjects
    from workers.state import STATE, WorkerState

    settings = Settings(redis_url=args.redis, database_url=args.db, queue=f"cpu-{args.name}")
    state = WorkerState(settings)
    state.pool = await db.create_pool(args.db, size=1)
    state.redis = aioredis.Redis.from_url(args.redis)
    if "key_path" in inspect.signature(ErasedSubjects).parameters:  # trees since erasure's key
        state.erased = ErasedSubjects(settings.subject_entity_types, settings.subject_key_path)
    else:
        state.erased = ErasedSubjects(settings.subject_entity_types)
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=1)
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
    copier = await asyncpg.connect(args.db)  # no text codecs: binary COPY, as bench/ceilings.py
    copier_backend = int(await copier.fetchval("SELECT pg_backend_pid()"))

    def payload(run: str) -> str:
        parts = []
        for i in range(args.per_job):
            fields = _event(run, i)
            if args.kind == "client":
                _, data = finalize(msgspec.convert(fields, AuditEvent))
                parts.append(data.decode())
            else:
                parts.append(json.dumps(fields))
        return "[" + ",".join(parts) + "]"

    from bench.ceilings import COLUMNS, row

    async def run_job(text: str, n: int) -> None:
        ctx = {
            STATE: state,
            "job_id": f"{args.name}-{uuid.uuid4().hex}",
            "enqueue_time": datetime.now(UTC),
            "job_try": 1,
            "redis": state.redis,
        }
        result = await job_module.store_events(ctx, text, finalized=args.kind == "client")
        assert result["stored"] == n and result["rejected"] == 0, result

    await run_job(payload("warm"), args.per_job)  # connections, caches, plans
    texts = [payload(f"r{uuid.uuid4().hex[:8]}-{j}") for j in range(args.jobs)]
    rows = [[row("copy", i) for i in range(args.per_job)] for _ in range(args.jobs)]
    worker = job_pg = copy_pg = 0.0
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
    for text, batch in zip(texts, rows, strict=True):
        if profiler is not None:
            profiler.start()
        w0, p0 = time.process_time(), _proc_cpu(backend)
        await run_job(text, args.per_job)
        w1, p1 = time.process_time(), _proc_cpu(backend)
        if profiler is not None:
            profiler.stop()
        c0 = _proc_cpu(copier_backend)
        await copier.copy_records_to_table("audit_log", records=batch, columns=COLUMNS)
        c1 = _proc_cpu(copier_backend)
        worker += w1 - w0
        job_pg += p1 - p0
        copy_pg += c1 - c0
    async with state.pool.acquire() as conn:
        dupes = await conn.fetchval("SELECT count(*) - count(DISTINCT id) FROM audit_log")
    assert dupes == 0
    if profiler is not None:
        text = profiler.output_text(unicode=True, show_all=False)
        Path(args.profile).write_text(text)  # noqa: ASYNC240
    n = args.jobs * args.per_job
    print(
        json.dumps(
            {
                "worker_us": worker / n * 1e6,
                "job_pg_us": job_pg / n * 1e6,
                "copy_pg_us": copy_pg / n * 1e6,
                "module": job_module.__file__,
            }
        )
    )
    await copier.close()
    await state.pool.close()
    await state.redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", help="code trees to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--per-job", type=int, default=1000)
    parser.add_argument("--kind", choices=("client", "foreign"), default="client")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--name", default="x")
    parser.add_argument("--db")
    parser.add_argument("--redis")
    parser.add_argument("--profile", help="child: write a pyinstrument profile of the jobs here")
    args = parser.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("auditq.worker").setLevel(
            logging.INFO if os.environ.get("AUDITQ_BENCH_LOG") else logging.WARNING
        )
        asyncio.run(child(args))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import Stack

    snapshot = None
    trees = args.tree
    if not trees:
        snapshot = Path(tempfile.mkdtemp(prefix="auditq-main-"))
        archive = subprocess.run(
            ["git", "archive", "main"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
        trees = [str(snapshot), str(ROOT)]
    results: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    try:
        with Stack() as stack:
            urls = {}
            for n, tree in enumerate(trees):
                name = f"tree{n}"
                stack.stack.postgres.create_database(name)
                urls[tree] = stack.stack.postgres.url_for(name)
                subprocess.run(
                    [sys.executable, "-c", "import asyncio, sys; from service.store import db; "
                     "asyncio.run(db.migrate(sys.argv[1]))", urls[tree]],
                    env={**os.environ, "PYTHONPATH": tree}, check=True, cwd=tree,
                )  # fmt: skip
            for r in range(args.rounds):
                for n, tree in enumerate(trees if r % 2 == 0 else reversed(trees)):
                    cmd = [sys.executable, str(Path(__file__)), "--child", "--name", f"t{n}"]
                    cmd += ["--db", urls[tree], "--redis", stack.redis_url, "--kind", args.kind]
                    cmd += ["--jobs", str(args.jobs), "--per-job", str(args.per_job)]
                    if args.profile and r == 0:
                        cmd += ["--profile", f"{args.profile}.{n}.txt"]
                    out = subprocess.run(
                        cmd, env={**os.environ, "PYTHONPATH": tree}, cwd=tree,
                        check=False, capture_output=True, text=True,
                    )  # fmt: skip
                    if os.environ.get("AUDITQ_BENCH_LOG"):
                        print(out.stderr[-3000:], file=sys.stderr)
                    if out.returncode:
                        sys.exit(f"child of {tree} failed:\n{out.stderr[-3000:]}")
                    results[tree].append(json.loads(out.stdout.splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
    print(f"kind={args.kind}, {args.per_job} events per job, {args.jobs} jobs per round")
    print("| tree | worker µs/event | PG µs/row (job) | PG µs/row (bare COPY) | job/COPY |")
    print("|---|---:|---:|---:|---:|")
    for tree, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "module"}
        print(
            f"| {tree} | {med['worker_us']:.1f} | {med['job_pg_us']:.1f} | "
            f"{med['copy_pg_us']:.1f} | {med['job_pg_us'] / med['copy_pg_us']:.2f} |"
        )
        print(f"   rounds worker: {[round(r['worker_us'], 1) for r in runs]}", file=sys.stderr)
        print(f"   rounds pg job: {[round(r['job_pg_us'], 1) for r in runs]}", file=sys.stderr)
        print(f"   rounds pg copy: {[round(r['copy_pg_us'], 1) for r in runs]}", file=sys.stderr)
        print(f"   module: {runs[0]['module']}", file=sys.stderr)


if __name__ == "__main__":
    main()
