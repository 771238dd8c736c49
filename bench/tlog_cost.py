"""The transparency log's cost: sealing CPU per row, receipts and consistency proofs on a
large store, and the verify rate (docs/integrity.md, "Cost").

Usage: .venv/bin/python -m bench.tlog_cost [ROWS]
Rows are made in PostgreSQL (bench.verify's INSERT), sealed into the log in batches of
20,000 as the sealer does (the sealer's and PostgreSQL's CPU per row). Then 1,000 receipts
of random events, 200 consistency proofs between random checkpoints, and one verification of
the log as `auditq verify` runs it (its rows checked by a process per core).
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Stack, cpu_seconds
from bench.verify import INSERT
from service.integrity.keys import load_or_create_private_key
from service.integrity.logverify import verify_log
from service.store import copyleaf, db, logcheck, tlog
from service.store.leaves import row_leaf_data
from service.store.receipts import receipt_of
from service.store.seals import NEW_ACTIONS, NEW_ROWS, LogConfig, seal_once

ROWS = 1_000_000
BATCH = 20_000
RECEIPTS = 1_000
CONSISTENCY = 200


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that ended (the verify processes)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _parent(pid: int) -> int:
    """A process's parent (a backend's: the postmaster)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def _seal(conn: asyncpg.Connection, key: Any, log: LogConfig | None) -> tuple[float, float]:
    """Seal what is pending; (the sealer's CPU, PostgreSQL's CPU) in seconds."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    process, server = time.process_time(), cpu_seconds(pid, with_children=False)
    while await seal_once(conn, key, log) is not None:
        pass
    return time.process_time() - process, cpu_seconds(pid, with_children=False) - server


async def run(rows: int) -> dict[str, Any]:
    with Stack() as stack:
        await stack.migrate()
        url = stack.database_url
        key = load_or_create_private_key(stack.dir / "seal-key")
        log = LogConfig(state_path=stack.dir / "seal-state", origin="auditq/bench")
        conn = await db.connect(url)
        sealer_s = server_s = 0.0
        began = time.perf_counter()
        for start in range(0, rows, BATCH):
            end = min(start + BATCH, rows)
            await conn.execute(INSERT, start + 1, end, timeout=600)
            py, pg = await _seal(conn, key, log)
            sealer_s += py
            server_s += pg
        build_s = time.perf_counter() - began
        await conn.execute("VACUUM ANALYZE")
        ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM audit_log TABLESAMPLE SYSTEM (1) LIMIT $1", RECEIPTS * 3
        )]  # fmt: skip
        rng = random.Random(25)
        sample = rng.sample(ids, min(RECEIPTS, len(ids)))
        receipt_ms = []
        for event_id in sample:
            t = time.perf_counter()
            found = await receipt_of(conn, event_id)
            receipt_ms.append((time.perf_counter() - t) * 1000)
            assert found is not None
        sizes = [r["size"] for r in await conn.fetch("SELECT size FROM tlog_checkpoint")]
        consistency_ms = []
        for _ in range(CONSISTENCY):
            old, new = sorted(rng.sample(sizes, 2))
            t = time.perf_counter()
            await tlog.Tree(conn).consistency_proof(old, new)
            consistency_ms.append((time.perf_counter() - t) * 1000)
        lines: list[str] = []
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        postmaster = _parent(backend)
        server = cpu_seconds(postmaster)  # its backends, those that ended included
        began, cpu = time.perf_counter(), _cpu_with_children()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            report = await verify_log(
                conn, key.public_key(), row_leaf_of=row_leaf_data, rows_query=NEW_ROWS,
                actions_query=NEW_ACTIONS, emit=lines.append,
                rows_check=logcheck.rows_check(url),
            )  # fmt: skip
        verify_s = time.perf_counter() - began
        verify_cpu = _cpu_with_children() - cpu
        assert report.findings == 0, lines[:5]
        await conn.close()
        verify_server = cpu_seconds(postmaster) - server
        return {
            "rows": rows,
            "build_s": build_s,
            "seal_log_py_us": sealer_s / rows * 1e6,
            "seal_log_pg_us": server_s / rows * 1e6,
            "receipt_p50_ms": statistics.median(receipt_ms),
            "receipt_p95_ms": _p(receipt_ms, 95),
            "consistency_p50_ms": statistics.median(consistency_ms),
            "consistency_p95_ms": _p(consistency_ms, 95),
            "verify_log_rows_per_s": report.rows / verify_s,
            "verify_log_cpu_us": verify_cpu / report.rows * 1e6,
            "verify_server_cpu_us": verify_server / report.rows * 1e6,
            "verify_processes": logcheck.processes(),
            "verify_on": "connections" if copyleaf.available() else "processes",
            "load_average": os.getloadavg()[0],
            "leaves": report.leaves,
            "checkpoints": report.checkpoints,
        }


def main(rows: int) -> None:
    r = asyncio.run(run(rows))
    print(f"store of {r['rows']:,} rows ({r['leaves']:,} leaves, {r['checkpoints']} checkpoints), "
          f"built and sealed in {r['build_s']:.0f} s")  # fmt: skip
    table = [
        ("sealing: sealer / PostgreSQL CPU per row",
         f"{r['seal_log_py_us']:.2f} / {r['seal_log_pg_us']:.2f} µs"),
        ("receipt (auditq proof) p50 / p95",
         f"{r['receipt_p50_ms']:.1f} / {r['receipt_p95_ms']:.1f} ms"),
        ("consistency proof p50 / p95",
         f"{r['consistency_p50_ms']:.1f} / {r['consistency_p95_ms']:.1f} ms"),
        ("verify of the log", f"{r['verify_log_rows_per_s']:,.0f} rows/s "
         f"({r['verify_processes']} {r['verify_on']}, {r['verify_log_cpu_us']:.1f} µs of the "
         f"verifier's CPU a row, PostgreSQL's {r['verify_server_cpu_us']:.1f})"),
    ]  # fmt: skip
    print("| what | figure |")
    print("|---|---:|")
    for what, figure in table:
        print(f"| {what} | {figure} |")
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else ROWS)
