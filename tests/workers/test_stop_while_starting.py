"""A worker stopped before it finished starting (a Ctrl-C right after `auditq run`) lets go of
everything its start-up made: no connection to Redis stays open, no background task runs on."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import psutil

from service.settings import Settings
from workers.runner import build_worker, run_until, worker_state

# The stages of a start-up a stop can come in, each told by what the worker holds by then.
STAGES = {
    "before it starts": lambda worker: True,
    "once it has its Redis pool": lambda worker: worker._pool is not None,
    "once its start-up has its database pool": lambda worker: worker_state(worker).pool
    is not None,
}


def _open_to(port: int) -> set[tuple[str, int]]:
    """This process's TCP connections to `port` that are open (their local addresses)."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }


async def test_a_worker_stopped_while_it_starts_leaves_nothing_open(settings: Settings) -> None:
    port = urlsplit(settings.redis_url).port
    assert port is not None
    tasks_before = asyncio.all_tasks()
    open_before = _open_to(port)
    for stage, reached in STAGES.items():
        worker = build_worker(settings)
        stop = asyncio.Event()
        running = asyncio.create_task(run_until(worker, stop))
        while not reached(worker) and not running.done():
            await asyncio.sleep(0)  # one loop step at a time: the stop lands at that stage
        stop.set()
        await running
        left = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        left.discard(asyncio.current_task())  # type: ignore[arg-type]
        assert not left, f"stopped {stage}: tasks still running: {left}"
        assert not _open_to(port) - open_before, f"stopped {stage}: a Redis connection is open"
