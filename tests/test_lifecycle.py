"""auditq audits itself: `auditq run` records service.started and service.stopping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import asyncpg

from service.events import Actor
from service.own_events import API_SOURCE, VERSION, WORKER_SOURCE, lifecycle_event
from tests.support.polling import wait_for
from tests.support.servers import Servers, new_queue_name

AUDITQ = Path(sys.executable).parent / "auditq"
PROCESS_TIMEOUT = 120.0  # seconds: two CPUs shared with other suites can be slow


def test_a_lifecycle_event_names_the_process() -> None:
    event = lifecycle_event("service.started", source=WORKER_SOURCE, worker_id="w-1")
    assert event.action == "service.started"
    assert event.actor == Actor(id="auditq-worker", type="system", name="auditq-worker")
    assert event.source == "auditq-worker"
    assert event.metadata == {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": VERSION,
        "worker_id": "w-1",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_run(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """Start `auditq run` (its log to `log`) and wait until it says it is running."""
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(AUDITQ), "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    assert proc.stdout is not None
    async with asyncio.timeout(PROCESS_TIMEOUT):
        while b"auditq is running" not in await proc.stdout.readline():
            assert not proc.stdout.at_eof(), "auditq run ended before it was running"
    return proc


async def stop_run(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    async with asyncio.timeout(PROCESS_TIMEOUT):
        await proc.stdout.read()
        assert await proc.wait() == 0


async def lifecycle_rows(database_url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT action, source, actor_id, actor_type, entity_type, entity_id,"
            " metadata::text AS metadata FROM audit_log WHERE action LIKE 'service.%'"
        )
    finally:
        await conn.close()
    return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]


def seen(rows: list[dict[str, Any]], action: str, pid: int) -> set[str]:
    return {r["source"] for r in rows if r["action"] == action and r["metadata"]["pid"] == pid}


async def test_auditq_run_records_its_start_and_its_stop(
    database_url: str, servers: Servers, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(
        AUDITQ_REDIS_URL=servers.redis_url,
        AUDITQ_DATABASE_URL=database_url,
        AUDITQ_QUEUE=new_queue_name(),
        AUDITQ_DATA_DIR=str(tmp_path),
        AUDITQ_HTTP_PORT=str(free_port()),
        # The suite's servers' superuser for everything (this is about lifecycle events).
        AUDITQ_ALLOW_PRIVILEGED_ROLE="1",
    )
    both = {API_SOURCE, WORKER_SOURCE}
    rows: list[dict[str, Any]] = []

    async def recorded(action: str, pid: int) -> bool:
        rows[:] = await lifecycle_rows(database_url)
        return seen(rows, action, pid) == both

    log = tmp_path / "auditq-run.log"
    first = await start_run(env, log)
    try:
        await wait_for(lambda: recorded("service.started", first.pid), within_s=PROCESS_TIMEOUT)
    finally:
        await stop_run(first)
    # Each stopping event is enqueued first in its shutdown; the next run's worker stores
    # what the stopping worker no longer took: nothing is lost across the restart.
    second = await start_run(env, log)
    try:
        await wait_for(lambda: recorded("service.stopping", first.pid), within_s=PROCESS_TIMEOUT)
        await wait_for(lambda: recorded("service.started", second.pid), within_s=PROCESS_TIMEOUT)
    finally:
        await stop_run(second)
    assert "[AuditLog]" not in log.read_text()  # no lifecycle event failed to be queued

    for row in rows:
        assert row["actor_type"] == "system"
        assert row["actor_id"] == row["source"] == row["entity_id"]
        assert row["entity_type"] == "service"
        assert {"host", "pid", "version"} <= row["metadata"].keys()
        assert row["metadata"]["host"] == socket.gethostname()
    worker_rows = [r for r in rows if r["source"] == WORKER_SOURCE]
    assert all(r["metadata"]["worker_id"] for r in worker_rows)


async def test_the_workers_own_client_spools_apart_from_the_apis(
    settings: Any, tmp_path: Path
) -> None:
    """Under `auditq run` both share a data dir: a segment must be replayed by the client
    (and so with the provenance claim) that wrote it, never by the other."""
    import dataclasses

    from workers.runner import build_worker, run_until, worker_state

    spool = tmp_path / "spool"
    settings = dataclasses.replace(settings, spool_dir=spool)
    worker = build_worker(settings, audit_lifecycle=True)
    stop = asyncio.Event()
    task = asyncio.create_task(run_until(worker, stop))
    try:

        async def started() -> bool:
            return worker_state(worker).client is not None

        await wait_for(started)
        client = worker_state(worker).client
        assert client is not None and client._spooler is not None
        assert client._spooler.spool.directory == spool / "worker"
    finally:
        stop.set()
        await task
