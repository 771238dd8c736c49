"""Verify rate: `auditq verify` over 200,000 sealed rows on the embedded servers (rows/s).

Usage: .venv/bin/python -m bench.verify [ROWS]
Rows are made in PostgreSQL (generate_series, the shape of a typical event), sealed in v1
checkpoints of 20,000 rows (the sealer without a log digests them), then verified; the CPU
per row of each step is printed too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import asyncpg

from bench.common import Stack, cpu_seconds
from service.integrity.keys import load_or_create_private_key
from service.integrity.verify import verify
from service.store.seals import seal_once

ROWS = 200_000
PER_CHECKPOINT = 20_000
INSERT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, actor_id, actor_type,
    actor_name, entity_type, entity_id, entity_name, request_id, ip, user_agent, method, path,
    status, duration_ms, changes, metadata, presentation, source, received_via)
SELECT gen_random_uuid(), now() - make_interval(secs => g / 1000.0), 'project.updated',
    'project', 'info', 'success', 'u-' || (g % 1000), 'user', 'User ' || g, 'project',
    'p-' || g, 'Project ' || g, 'req-' || g, '203.0.113.7',
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36', 'POST', '/api/projects/' || g, 200,
    12.5, '[{"field": "name", "old": "a", "new": "b"}]',
    '{"plan": "pro", "seats": 12, "region": "eu-west-1"}',
    '{"code": "audit.project.updated", "params": {"name": "x"}}', 'web', 'redis:audit-logs'
FROM generate_series($1::int, $2::int) g
"""


async def run(rows: int) -> dict[str, Any]:
    """Store, seal and verify `rows` rows; the rates and the CPU per row of each step."""
    with Stack() as stack:
        await stack.migrate()
        url = stack.database_url
        key = load_or_create_private_key(stack.dir / "seal-key")
        conn = await asyncpg.connect(url)  # no command timeout: a loaded machine is slow
        own = await conn.fetchval("SELECT pg_backend_pid()")
        sealing = insert_cpu = seal_cpu = 0.0
        for start in range(0, rows, PER_CHECKPOINT):
            cpu = cpu_seconds(own, with_children=False)
            await conn.execute(INSERT, start + 1, min(start + PER_CHECKPOINT, rows))
            insert_cpu += cpu_seconds(own, with_children=False) - cpu
            began, cpu = time.perf_counter(), cpu_seconds(own, with_children=False)
            await seal_once(conn, key)
            sealing += time.perf_counter() - began
            seal_cpu += cpu_seconds(own, with_children=False) - cpu
        await conn.execute("VACUUM ANALYZE audit_log")
        lines: list[str] = []
        rows_conn = await asyncpg.connect(url)
        backend = await rows_conn.fetchval("SELECT pg_backend_pid()")
        began, client_cpu, server_cpu = (
            time.perf_counter(),
            time.process_time(),
            cpu_seconds(backend, with_children=False),
        )
        report = await verify(conn, key.public_key(), emit=lines.append, rows_conn=rows_conn)
        elapsed = time.perf_counter() - began
        client_cpu = time.process_time() - client_cpu
        server_cpu = cpu_seconds(backend, with_children=False) - server_cpu
        await rows_conn.close()
        await conn.close()
        assert report.findings == 0, lines[:5]
        return {
            "rows": report.rows,
            "seal_rows_per_s": rows / sealing,
            "verify_rows_per_s": report.rows / elapsed,
            "store_pg_cpu_us_per_row": insert_cpu / rows * 1e6,
            "seal_pg_cpu_us_per_row": seal_cpu / rows * 1e6,
            "verifier_cpu_us_per_row": client_cpu / report.rows * 1e6,
            "row_stream_cpu_us_per_row": server_cpu / report.rows * 1e6,
        }


def main(rows: int) -> None:
    r = asyncio.run(run(rows))
    print("| what | rows | rows/s |")
    print("|---|---:|---:|")
    print(f"| seal (digest the queued rows, sign v1) | {rows} | {r['seal_rows_per_s']:,.0f} |")
    print(f"| verify (client-side digests) | {r['rows']} | {r['verify_rows_per_s']:,.0f} |")
    print(
        f"PostgreSQL CPU: storing {r['store_pg_cpu_us_per_row']:.2f} µs/row (one INSERT of "
        f"{PER_CHECKPOINT:,} rows, the seal trigger's queueing included), "
        f"sealing {r['seal_pg_cpu_us_per_row']:.2f} µs/row"
    )
    print(
        f"CPU of the verifier: {r['verifier_cpu_us_per_row']:.2f} µs/row, of the server's row "
        f"stream: {r['row_stream_cpu_us_per_row']:.2f} µs/row; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else ROWS)
