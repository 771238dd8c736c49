"""The read side: the admin API (its own process, over HTTP) on a table of many rows.

Rows are made with COPY (indexes dropped during the load and made again from schema.sql,
the statistics rollup folded as the worker folds it, then VACUUM ANALYZE, as autovacuum
would have done): 90 days of events from 2,000 actors on 50,000 entities, 30 actions,
20 tenants, and a note of three words from 1,000 in the metadata. Each query runs REPS
times with random parameters; latency is the HTTP round trip.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.ceilings import COLUMNS, COPY_BATCH
from bench.common import ROOT, VENV_BIN, Stack, memory_kib, percentile
from service.embedded.servers import free_port
from service.store.partitions import ensure_partitions
from service.store.rollup import fold_all

DAYS = 90
ACTORS = 2_000
ENTITIES = 50_000
ENTITY_TYPES = ("document", "project", "user", "invoice", "report")
ACTIONS = tuple(
    f"{noun}.{verb}"
    for noun in ("document", "project", "user", "invoice", "report", "auth")
    for verb in ("created", "updated", "deleted", "viewed", "exported")
)
WORDS = tuple(f"w{n:04d}" for n in range(1_000))
TENANTS = 20
PAGE = 50  # the API's default page size


def make_rows(count: int, now: datetime, seed: int = 7) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    span = DAYS * 86_400
    rows = []
    for i in range(count):
        ts = now - timedelta(seconds=rnd.random() * span)
        action = ACTIONS[rnd.randrange(len(ACTIONS))]
        actor = rnd.randrange(ACTORS)
        entity = rnd.randrange(ENTITIES)
        note = " ".join(WORDS[rnd.randrange(len(WORDS))] for _ in range(3))
        rows.append(
            (
                uuid.uuid4(),
                ts,
                action,
                action.split(".", 1)[0],
                "warning" if i % 50 == 0 else "info",
                "failure" if i % 40 == 0 else "success",
                f"user-{actor}",
                "user",
                f"User {actor}",
                f"user{actor}@example.com",
                ENTITY_TYPES[entity % len(ENTITY_TYPES)],
                str(entity),
                f"Item {entity}",
                f"tenant-{i % TENANTS}",
                f"req-{i}",
                f"10.{i % 256}.{(i >> 8) % 256}.{(i >> 16) % 256}",
                "Mozilla/5.0 (bench)",
                "POST",
                "/api/items",
                200,
                12.5,
                json.dumps([{"field": "title", "old": "Draft", "new": f"Final {i}"}]),
                json.dumps({"note": note, "i": i, "client": "bench"}),
                json.dumps({"code": f"audit.{action}", "params": {}}),
                "bench",
            )
        )
    return rows


async def load(stack: Stack, count: int) -> dict[str, Any]:
    """Fill audit_log with `count` rows, fast; return how long it took."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    conn = await asyncpg.connect(stack.database_url)
    try:
        first = (now - timedelta(days=DAYS + 1)).date()
        await ensure_partitions(conn, months_ahead=5, today=first)
        # The indexes are dropped for the load and made again as they were (schema.sql is
        # applied once, by the migrations: it is not run twice). A partitioned table's index
        # reads `ON ONLY` in its definition, which would leave the partitions without it.
        indexes = await conn.fetch(
            "SELECT indexname, replace(indexdef, ' ON ONLY ', ' ON ') AS made FROM pg_indexes "
            "WHERE tablename = 'audit_log' AND indexname <> 'audit_log_pkey'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        rows = make_rows(count, now)
        for start in range(0, count, COPY_BATCH * 20):
            await conn.copy_records_to_table(
                "audit_log", records=rows[start : start + COPY_BATCH * 20], columns=COLUMNS
            )
        del rows
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for index in indexes:
            await conn.execute(index["made"])
        # The statistics rollup, folded as the worker folds it (COPY queued the rows too).
        folding = time.perf_counter()
        await fold_all(conn)
        fold_s = time.perf_counter() - folding
        folded = await conn.fetchval("SELECT sum(n) FROM rollup_day")
        if folded != count:
            raise RuntimeError(f"the rollup counts {folded} rows, not {count}")
        await conn.execute(
            "VACUUM ANALYZE audit_log, rollup_day, rollup_day_tenant, rollup_day_actor"
        )
    finally:
        await conn.close()
    return {"rows": count, "load_s": time.perf_counter() - started, "rollup_fold_s": fold_s}


class Api:
    """`auditq api` in its own process, with an admin token."""

    def __init__(self, stack: Stack, log: Path) -> None:
        self.stack = stack
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> None:
        env = self.stack.env(AUDITQ_HTTP_PORT=str(self.port), AUDITQ_LOG_LEVEL="WARNING")
        made = subprocess.run(
            [str(VENV_BIN / "auditq"), "tokens", "create", "--name", "bench", "--role", "admin"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.token = made.stdout.strip().splitlines()[-1]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "auditq"), "api"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/admin/audit-logs"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _wait_ready(session: aiohttp.ClientSession, api: Api) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{api.port}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the API did not become ready")


async def _timed_get(
    session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None
) -> tuple[float, Any]:
    started = time.perf_counter()
    async with session.get(url, params=params) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} {params}: {response.status} {body[:300]!r}")
    return (time.perf_counter() - started) * 1000, json.loads(body)


def _summary(latencies: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}


def _counted(case: tuple[str, dict[str, str]]) -> tuple[str, dict[str, str]]:
    url, params = case
    return url, {**params, "count": "true"}


async def queries(api: Api, reps: int, pages: int) -> dict[str, Any]:
    rnd = random.Random(11)
    now = datetime.now(UTC)
    headers = {"Authorization": f"Bearer {api.token}"}
    result: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        await _wait_ready(session, api)

        def entity() -> str:
            n = rnd.randrange(ENTITIES)
            return f"{api.base}/entity/{ENTITY_TYPES[n % len(ENTITY_TYPES)]}/{n}"

        def action_range() -> tuple[str, dict[str, str]]:
            day = now - timedelta(days=rnd.randrange(1, DAYS - 1))
            params = {
                "action": ACTIONS[rnd.randrange(len(ACTIONS))],
                "since": (day - timedelta(days=1)).isoformat(),
                "until": day.isoformat(),
            }
            return api.base, params

        def tenant() -> str:
            return f"tenant-{rnd.randrange(TENANTS)}"

        cases = {
            "entity_history": lambda: (entity(), None),
            "actor_history": lambda: (f"{api.base}/user/user-{rnd.randrange(ACTORS)}", None),
            "action_time_range": action_range,
            "full_text": lambda: (api.base, {"q": WORDS[rnd.randrange(len(WORDS))]}),
            # A first page with its total (count=true): exact within the budget, else estimated.
            "count_all": lambda: (api.base, {"count": "true"}),
            "count_action_range": lambda: _counted(action_range()),
            "count_tenant": lambda: (api.base, {"tenant": tenant(), "count": "true"}),
            "count_full_text": lambda: (
                api.base,
                {"q": WORDS[rnd.randrange(len(WORDS))], "count": "true"},
            ),
            # Inside payloads: a metadata value and a changed field.
            "metadata_match": lambda: (api.base, {"metadata": f"i={rnd.randrange(1_000_000)}"}),
            "change_field": lambda: (api.base, {"change_field": "title"}),
        }
        for name, make in cases.items():
            await _timed_get(session, *make())  # warm: the plan cached, the pool connected
            latencies = [(await _timed_get(session, *make()))[0] for _ in range(reps)]
            result[name] = _summary(latencies)

        # Keyset pages: page 1 against page 1,000 (50 rows a page) of the whole table.
        first = [(await _timed_get(session, api.base))[0] for _ in range(reps)]
        cursor = None
        for _ in range(pages - 1):
            _, body = await _timed_get(session, api.base, {"cursor": cursor} if cursor else None)
            cursor = body["next_cursor"]
        deep = [(await _timed_get(session, api.base, {"cursor": cursor}))[0] for _ in range(reps)]
        result["page_1"] = _summary(first)
        result[f"page_{pages}"] = _summary(deep)
        result["deep_page"] = pages

        stats = [
            (await _timed_get(session, f"{api.base}/statistics"))[0]
            for _ in range(max(5, reps // 5))
        ]
        result["statistics_30d"] = _summary(stats)
        tenant_stats = [
            (await _timed_get(session, f"{api.base}/statistics", {"tenant": tenant()}))[0]
            for _ in range(max(5, reps // 5))
        ]
        result["statistics_30d_tenant"] = _summary(tenant_stats)
    return result


OWN_RECORDS_MAX = 10


async def export(api: Api, expected_rows: int) -> dict[str, Any]:
    assert api.proc is not None
    pid = api.proc.pid
    headers = {"Authorization": f"Bearer {api.token}"}
    rss_before = memory_kib(pid, "VmRSS")
    peak = rss_before
    samples = []
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            rss = memory_kib(pid, "VmRSS")
            samples.append(rss)
            peak = max(peak, rss)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    lines = 0
    size = 0
    last = b""  # a CRLF may be split between two chunks
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        started = time.perf_counter()
        async with session.get(f"{api.base}/export", params={"format": "csv"}) as response:
            async for chunk in response.content.iter_chunked(1 << 20):
                lines += (last + chunk[:1] == b"\r\n") + chunk.count(b"\r\n")
                last = chunk[-1:]
                size += len(chunk)
        elapsed = time.perf_counter() - started
    done.set()
    await sampler
    rows = lines - 1  # the header
    # Every loaded row, and the product's own records on top (the admin token made for this
    # run, the export's own record: auditq records what its admins do).
    if not expected_rows <= rows <= expected_rows + OWN_RECORDS_MAX:
        raise RuntimeError(f"export gave {rows} rows, not {expected_rows} and a few of its own")
    return {
        "rows": rows,
        "bytes": size,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "api_rss_before_mib": rss_before / 1024,
        "api_rss_peak_mib": peak / 1024,
        "api_rss_growth_mib": (peak - rss_before) / 1024,
    }


async def run_all(rows: int, reps: int, pages: int, logs: Path) -> dict[str, Any]:
    with Stack() as stack:
        await stack.migrate()
        print(f"  read side: loading {rows:,} rows …", file=sys.stderr, flush=True)
        loaded = await load(stack, rows)
        print(
            f"    {loaded['load_s']:.0f} s (the rollup folded in {loaded['rollup_fold_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        api = Api(stack, logs / "read-api.log")
        api.start()
        try:
            print("  read side: queries …", file=sys.stderr, flush=True)
            result = await queries(api, reps, pages)
            for name, value in result.items():
                if isinstance(value, dict):
                    print(
                        f"    {name}: p50 {value['p50']:.1f} ms, p95 {value['p95']:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
            print("  read side: CSV export …", file=sys.stderr, flush=True)
            result["export_csv"] = await export(api, rows)
            print(
                f"    {result['export_csv']['rows_per_s']:,.0f} rows/s, API RSS "
                f"{result['export_csv']['api_rss_before_mib']:.0f} → "
                f"{result['export_csv']['api_rss_peak_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
        finally:
            api.stop()
    result["load"] = loaded
    return result
