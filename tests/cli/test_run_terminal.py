"""What `auditq run` shows in a terminal: the address and token last, a few lines under load,
no alarming warning on a restart, a Ctrl-C named as what it was."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from service.embedded.servers import EmbeddedStack, free_port
from service.embedded.valkey_process import ValkeyProcess
from tests.support.polling import wait_for
from workers.stored_report import StoredReport

AUDITQ = [sys.executable, "-m", "service.cli"]
RUNNING = "auditq is running"


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="auditq-run-"))
    yield parent / ".auditq"
    EmbeddedStack(parent / ".auditq").destroy()
    await asyncio.to_thread(shutil.rmtree, parent, True)


def start_demo(env: dict[str, str], out_path: Path) -> subprocess.Popen[bytes]:
    """`auditq run --demo` in its own session, its output to `out_path`."""
    with open(out_path, "w") as out:
        return subprocess.Popen(
            [*AUDITQ, "run", "--demo"], stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip


async def test_run_with_demo_traffic_keeps_the_terminal_readable(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITQ_", "PYTEST_"))}
    env |= {"AUDITQ_DATA_DIR": str(data_dir), "AUDITQ_HTTP_PORT": str(free_port())}
    out_path = data_dir.parent / "run.out"
    began = time.monotonic()
    process = start_demo(env, out_path)
    try:

        async def summarised() -> bool:
            assert process.poll() is None, out_path.read_text()
            return "tasks over the last" in out_path.read_text()

        await wait_for(summarised, within_s=120, interval=0.2)
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, 60)
    elapsed = time.monotonic() - began  # longer than the stack ran: the bound is generous
    lines = out_path.read_text().splitlines()
    assert process.returncode == 0, lines

    start = next(i for i, line in enumerate(lines) if RUNNING in line)
    # The start-up ends with what a person needs: where the producers' URLs are, the token
    # and the address, in that order, nothing logged between them.
    assert lines[start - 2].startswith("for producers: set -a; . "), lines[: start + 1]
    assert lines[start - 2].endswith("producer.env"), lines[: start + 1]
    assert lines[start - 1].startswith("admin token"), lines[: start + 1]
    after = lines[start + 1 : next(i for i, line in enumerate(lines) if "stopping" in line)]
    stored = [line for line in after if "events stored" in line]
    assert stored, after
    # Demo traffic is a task every ~50 ms: a line per task (or three) would be dozens a second.
    # A summary at most every 5 s, plus the first batch's own line.
    assert len(after) <= 2 + elapsed / 5, after
    demo = next(line for line in lines if line.startswith("demo: "))
    assert int(demo.split()[1]) >= 20, demo  # it was under load
    assert not any("→" in line or "←" in line for line in lines), lines
    assert not any("SIGUSR1" in line for line in lines), lines


def test_valkey_answers_commands_as_soon_as_it_is_started_again(tmp_path: Path) -> None:
    port = free_port()
    config = {"appendonly": "yes", "save": "", "requirepass": "pw"}
    first = ValkeyProcess(port=port, data_dir=tmp_path, config=config)
    first.start(timeout=30)
    try:
        client = redis.Redis(port=port, password="pw")
        with client.pipeline(transaction=False) as pipe:
            for i in range(5000):
                pipe.set(f"k{i}", "v")
            pipe.execute()
        client.close()
    finally:
        first.stop(timeout=10)
    # Reading the file back takes a while (here: 0.2 ms a key, a second in all).
    again = ValkeyProcess(port=port, data_dir=tmp_path, config=config | {"key-load-delay": "200"})
    again.start(timeout=60)
    try:
        client = redis.Redis(port=port, password="pw")
        assert client.dbsize() == 5000  # no BusyLoadingError: "started" means it takes commands
        client.close()
    finally:
        again.stop(timeout=10)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_stored_events_are_one_line_a_batch_when_quiet_and_a_summary_under_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="auditq.worker")
    clock = Clock()
    report = StoredReport(every_s=5.0, clock=clock)

    def info() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]

    report.add("t-1", 3, 3, 0, 4.0)  # quiet: its own line at once
    assert info() == ["[AuditLogWorker] task t-1: 3 events stored (3 new), 0 rejected in 4.0 ms"]
    for n in range(99):  # 20 tasks a second for 4.95 s: no INFO line
        clock.now = 0.05 * (n + 1)
        report.add(f"t-{n + 2}", 1, 1, 0, 1.0)
    assert len(info()) == 1
    clock.now = 5.0
    report.add("t-101", 1, 1, 0, 1.0)  # 5 s since the last line: the summary
    assert len(info()) == 2
    assert re.fullmatch(
        r"\[AuditLogWorker\] 100 events stored \(100 new\), 0 rejected, in 100 tasks"
        r" over the last 5\.0 s",
        info()[-1],
    )
    assert not report.flush_if_due()  # nothing new
    clock.now = 20.0
    report.add("t-x", 2, 1, 1, 2.0)  # quiet again: its own line
    assert info()[-1] == "[AuditLogWorker] task t-x: 2 events stored (1 new), 1 rejected in 2.0 ms"
    clock.now = 21.0
    report.add("t-y", 1, 1, 0, 1.0)
    report.flush()  # a worker stopping says what it has
    assert info()[-1].startswith("[AuditLogWorker] task t-y: 1 events stored")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 100  # every task not on an INFO line when stored has its own at DEBUG
