"""Erasure rate: one subject pseudonymised in a large store while writes go on.

Usage: .venv/bin/python -m bench.erasure [ROWS]      (default 1,000,000; not a timed test)
A store of ROWS rows is made in PostgreSQL with generate_series on the embedded servers:
the subject is the actor of 1 in 1,000 of them, another 1 in 1,000 (other actors') name it
inside a URL, a path and an email in their metadata and request path; the others share one
client address (a NAT), the subject has its own (so the store looks for another user of it
through the whole table: the slow case of the shared-address rule). Then the erasure of
service/ops/subjects.py runs while a writer stores a batch of 100 events every 20 ms
through the worker's INSERT; printed: rows/s of the erasure, the writer's batch latency
before and during it, and this process's peak memory before and after (constant memory:
the rows are changed in PostgreSQL, batch by batch).
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from service.embedded.servers import EmbeddedStack
from service.events import Actor, AuditEvent, finalize
from service.ops import subjects
from service.settings import Settings
from service.store import db
from workers.writer import write_events

ROWS = 1_000_000
CHUNK = 20_000  # rows per generating statement
SUBJECT = "u-bench-subject"
WRITE_BATCH = 100  # events per concurrent write
WRITE_PAUSE_S = 0.02
INSERT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, actor_id, actor_type,
    actor_name, actor_email, entity_type, entity_id, entity_name, request_id, ip, user_agent,
    method, path, status, duration_ms, changes, metadata, presentation, source, received_via)
SELECT gen_random_uuid(), now() - make_interval(secs => g / 1000.0), 'project.updated',
    'project', 'info', 'success',
    CASE WHEN g % 1000 = 0 THEN $3 ELSE 'u-other-' || (g % 5000) END, 'user',
    CASE WHEN g % 1000 = 0 THEN $4 ELSE 'Other ' || (g % 5000) END,
    CASE WHEN g % 1000 = 0 THEN $5 ELSE 'o' || (g % 5000) || '@example.org' END,
    'project', 'p-' || g, 'Project ' || g,
    'req-' || g, CASE WHEN g % 1000 = 0 THEN '198.51.100.77' ELSE '203.0.113.7' END::inet,
    'Mozilla/5.0 (X11; Linux x86_64)', 'POST',
    CASE WHEN g % 1000 = 1 THEN '/customers/' || $5 || '/orders/' || g
         ELSE '/api/projects/' || g END, 200, 12.5,
    '[{"field": "name", "old": "a", "new": "b"}]',
    jsonb_build_object('plan', 'pro', 'note', CASE WHEN g % 1000 = 1
        THEN 'asked by ' || $4 || ', see https://app.example.com/users/' || $3 || '/profile'
        ELSE 'ordinary note ' || g END),
    '{"code": "audit.project.updated", "params": {}}', 'web', 'redis:audit-logs'
FROM generate_series($1::int, $2::int) g
"""


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _writer(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    conn = await db.connect(url)
    try:
        while not stop.is_set():
            events = [
                finalize(AuditEvent(action="doc.viewed", actor=Actor(id="u-w", type="user")))[0]
                for _ in range(WRITE_BATCH)
            ]
            began = time.perf_counter()
            await write_events(conn, events, received_via="redis:bench")
            latencies.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(WRITE_PAUSE_S)
    finally:
        await conn.close()


def _summary(latencies: list[float]) -> str:
    if len(latencies) < 2:
        return "n/a"
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms"


async def main(rows: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="auditq-bench-erasure-"))
    stack = EmbeddedStack(work / "servers")
    await asyncio.to_thread(stack.start)
    try:
        stack.postgres.create_database("bench_erasure")
        url = stack.postgres.url_for("bench_erasure")
        await db.migrate(url)
        conn = await asyncpg.connect(url)  # no statement timeout: bulk statements
        name, email = "Bench Subject", "bench.subject@example.org"
        for start in range(0, rows, CHUNK):
            end = min(start + CHUNK, rows)
            await conn.execute(INSERT, start + 1, end, SUBJECT, name, email)
        await conn.execute("VACUUM ANALYZE audit_log")
        await conn.close()
        settings = Settings(
            redis_url=stack.valkey.url, database_url=url, data_dir=work, queue="bench"
        )
        redis = aioredis.Redis.from_url(stack.valkey.url)
        pool = await db.create_pool(url, size=2)
        baseline: list[float] = []
        stop = asyncio.Event()
        writer = asyncio.create_task(_writer(url, stop, baseline))
        await asyncio.sleep(3)
        stop.set()
        await writer
        during: list[float] = []
        stop = asyncio.Event()
        writer = asyncio.create_task(_writer(url, stop, during))
        rss_before = _peak_rss_mib()
        began = time.perf_counter()
        outcome = await subjects.anonymise(pool, redis, settings, SUBJECT)
        elapsed = time.perf_counter() - began
        stop.set()
        await writer
        await pool.close()
        await redis.aclose()
        assert outcome is not None
        print(
            f"| store | {rows:,} rows: the subject's {rows // 1000:,}, naming it {rows // 1000:,} |"
        )
        print("|---|---|")
        print(f"| rows changed | {outcome.rows:,} in {len(outcome.actions):,} batches |")
        print(f"| seconds | {elapsed:.1f} |")
        print(f"| rows/s | {outcome.rows / elapsed:,.0f} |")
        print(f"| write of {WRITE_BATCH} events, before | {_summary(baseline)} |")
        print(f"| write of {WRITE_BATCH} events, during | {_summary(during)} |")
        rss = f"{rss_before:.0f} MiB before, {_peak_rss_mib():.0f} after"
        print(f"| peak RSS of this process | {rss} |")
    finally:
        await asyncio.to_thread(stack.stop)
        stack.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else ROWS))
