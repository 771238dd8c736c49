"""Stopping: Ctrl-C in a terminal stops `auditq run --demo` in under 10 s with nothing lost,
ten times in a row; a worker whose Redis is gone still exits on SIGTERM within its grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from service.embedded.servers import EmbeddedPostgres, EmbeddedValkey, free_port
from service.queue.keys import workers_key
from service.settings import Settings
from tests.faults.harness import Figures, spawn
from tests.faults.report import FaultReport
from tests.support.polling import wait_for
from tests.support.servers import server_dir
from workers.runner import SHUTDOWN_GRACE

DEPLOYMENT_GRACE_S = 45.0  # terminationGracePeriodSeconds of deploy/kubernetes/worker-deployment

pytestmark = pytest.mark.faults

STOPS = 10
STOP_WITHIN_S = 10.0  # seconds from Ctrl-C until the whole stack is down: the promise
START_WITHIN_S = 60.0  # seconds
DEMO_ROWS_PER_RUN = 20  # demo events stored before each Ctrl-C (about a second of demo)
RUNNING = "auditq is running"
DEMO_LINE = re.compile(r"demo: (\d+) events accepted, (\d+) not")
DEMO_ROWS = "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM audit_log WHERE source = $1"


@dataclasses.dataclass
class Stack:
    """`auditq run` on the embedded default, in a process group of its own like a terminal's."""

    data_dir: Path
    port: int
    runs: int = 0

    def start(self, *, demo: bool) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        log = self.data_dir.parent / f"run-{self.runs}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
        env |= {"AUDITQ_DATA_DIR": str(self.data_dir), "AUDITQ_HTTP_PORT": str(self.port)}
        command = [sys.executable, "-m", "service.cli.main", "run", *(["--demo"] * demo)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=out, start_new_session=True
            )
        return proc, log

    def url(self, name: str) -> str:
        """A URL of the running stack, from its env file."""
        for line in (self.data_dir / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return value
        raise AssertionError(f"no {name} in the env file")

    def database_url(self) -> str:
        return self.url("AUDITQ_DATABASE_URL")

    async def server_pids(self) -> dict[str, int]:
        """The process ids of the embedded Valkey and PostgreSQL."""
        redis = aioredis.Redis.from_url(self.url("AUDITQ_REDIS_URL"))
        try:
            valkey = int((await redis.info("server"))["process_id"])
        finally:
            await redis.aclose()
        pid_file = postmaster_pid_file(self.data_dir)
        return {"valkey": valkey, "postgresql": int(read(pid_file).split()[0])}


@pytest.fixture
def stack() -> Iterator[Stack]:
    root = server_dir()  # the embedded PostgreSQL's system user must reach it
    yield Stack(root / "auditq", free_port())
    shutil.rmtree(root, ignore_errors=True)


def read(path: Path) -> str:
    """A log's text (small files: read in the loop's thread)."""
    return path.read_text()


async def wait_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    async def running() -> bool:
        assert proc.poll() is None, f"`auditq run` exited ({proc.returncode}):\n{read(log)}"
        return RUNNING in read(log)

    await wait_for(running, within_s=START_WITHIN_S, what="`auditq run` is up")


async def demo_rows(database_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(DEMO_ROWS, "auditq-demo")
    finally:
        await conn.close()
    return row["n"], row["ids"]


def ctrl_c(proc: subprocess.Popen[bytes]) -> float:
    """SIGINT to the process group, as a terminal's Ctrl-C; return how long the stop took."""
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_WITHIN_S * 3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.monotonic() - started


def postmaster_pid_file(data_dir: Path) -> Path:
    """Where the embedded PostgreSQL of `data_dir` keeps its pid (as root: outside it)."""
    return EmbeddedPostgres(data_dir / "postgres").pgdata / "postmaster.pid"


def servers_down(data_dir: Path) -> list[str]:
    """The embedded servers still running after a stop (they live in sessions of their own)."""
    alive = []
    if postmaster_pid_file(data_dir).exists():
        alive.append("postgresql")
    port = int((data_dir / "valkey" / "port").read_text())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            alive.append("valkey")
    except OSError:
        pass
    return alive


async def ctrl_c_once(stack: Stack, problems: list[str]) -> tuple[float, int, int]:
    """Run `auditq run --demo` until it stored some events, Ctrl-C it, check how it stopped.

    Return the stop's seconds and the demo events accepted and not accepted.
    """
    proc, log = stack.start(demo=True)
    await wait_running(proc, log)
    database_url = stack.database_url()
    floor = (await demo_rows(database_url))[0] + DEMO_ROWS_PER_RUN
    # Out of the terminal's reach: a Ctrl-C goes to `auditq run`'s group only.
    for server, pid in (await stack.server_pids()).items():
        if os.getsid(pid) == os.getsid(proc.pid):
            problems.append(f"{server} is in the terminal's session: Ctrl-C reaches it")

    async def demo_flows() -> bool:
        return (await demo_rows(database_url))[0] >= floor

    await wait_for(demo_flows, within_s=30, what="demo events are stored")
    stop_s = await asyncio.to_thread(ctrl_c, proc)
    text = read(log)
    run = f"stop {stack.runs}"
    if stop_s > STOP_WITHIN_S or proc.returncode != 0:
        problems.append(f"{run}: {stop_s:.1f} s, exit {proc.returncode}")
    if "Traceback" in text:
        problems.append(f"{run}: a traceback:\n{text[-3000:]}")
    if still := servers_down(stack.data_dir):
        problems.append(f"{run}: still running: {still}")
    if (match := DEMO_LINE.search(text)) is None:
        problems.append(f"{run}: no demo summary:\n{text[-2000:]}")
        return stop_s, 0, 0
    return stop_s, int(match[1]), int(match[2])


async def test_ctrl_c_ten_times_stops_the_stack_within_10s_and_loses_nothing(
    stack: Stack, fault_report: FaultReport
) -> None:
    stop_times: list[float] = []
    accepted = refused = 0
    problems: list[str] = []
    for _ in range(STOPS):
        stop_s, took, refused_now = await ctrl_c_once(stack, problems)
        stop_times.append(stop_s)
        accepted += took
        refused += refused_now

    # Once more, without the demo: what the stops left in the queue (or a spool) is stored.
    proc, log = stack.start(demo=False)
    await wait_running(proc, log)
    started = time.monotonic()
    database_url = stack.database_url()

    async def all_stored() -> bool:
        return (await demo_rows(database_url))[1] >= accepted

    try:
        await wait_for(all_stored, within_s=60, what="every accepted demo event is stored")
    except AssertionError as exc:
        problems.append(str(exc))
    drain_s = time.monotonic() - started
    rows, ids = await demo_rows(database_url)
    stop_times.append(await asyncio.to_thread(ctrl_c, proc))
    figures = Figures(
        scenario="ctrl-c",
        accepted=accepted,
        stored=min(ids, accepted),
        duplicated=rows - ids,
        lost=max(accepted - ids, 0),
        drain_s=drain_s,
        notes=(
            f"{STOPS} stops of `auditq run --demo` and a last one: {min(stop_times):.1f} to "
            f"{max(stop_times):.1f} s (median {statistics.median(stop_times):.1f} s), no "
            f"traceback; {refused} demo events not accepted, {ids} stored in all"
        ),
        problems=problems,
    )
    if ids > accepted + refused:
        figures.problems.append(f"{ids} demo events stored, more than were offered")
    if figures.lost or figures.duplicated:
        figures.problems.append(f"{figures.lost} lost, {figures.duplicated} duplicated")
    fault_report.add(figures)
    assert not figures.problems, figures


async def test_a_worker_whose_redis_is_gone_exits_on_sigterm_within_its_grace(
    settings: Settings, own_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, redis_url=own_valkey.url)
    log = tmp_path / "worker.log"
    proc = spawn("worker", settings, log)
    redis = aioredis.Redis.from_url(own_valkey.url)
    try:

        async def beating() -> bool:
            assert proc.poll() is None, log.read_text()
            return bool(await redis.scard(workers_key(settings.queue)))

        await wait_for(beating, within_s=30, what="the worker's heartbeat")
    finally:
        await redis.aclose()
    await asyncio.to_thread(own_valkey.kill)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, SHUTDOWN_GRACE + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the worker did not exit on SIGTERM:\n{log.read_text()[-3000:]}")
    stop_s = time.monotonic() - started
    print(f"worker without Redis: exited {stop_s:.1f} s after SIGTERM")
    assert proc.returncode == 0, log.read_text()[-3000:]
    # The worker bounds its stop to SHUTDOWN_GRACE (20 s); a loaded machine adds the process's
    # own exit to that. The deployments give it 45 s before a SIGKILL (worker-deployment.yaml).
    assert stop_s < DEPLOYMENT_GRACE_S
    assert "Traceback" not in log.read_text()


async def test_ctrl_c_while_the_stack_starts_stops_it_cleanly(stack: Stack) -> None:
    proc, log = stack.start(demo=True)
    port_file = stack.data_dir / "valkey" / "port"  # written just before Valkey starts

    async def starting() -> bool:
        assert proc.poll() is None, read(log)
        return port_file.exists()

    await wait_for(starting, within_s=START_WITHIN_S, what="the embedded servers start")
    stop_s = await asyncio.to_thread(ctrl_c, proc)
    text = read(log)
    print(f"Ctrl-C while starting: stopped after {stop_s:.1f} s")
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert stop_s < STOP_WITHIN_S
    assert not servers_down(stack.data_dir)
