"""What every benchmark shares: the event, fresh servers, process CPU and memory, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from service.embedded.servers import EmbeddedStack
from service.integrity.keys import load_or_create_private_key
from service.store import db

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "bench" / "results"
ACTIONS = ("document.viewed", "document.updated", "auth.login", "project.created")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DATABASE = "bench"


def event_fields(run: str, i: int) -> dict[str, Any]:
    """The benchmark's event (wire format of the contract, no id and no ts): one shape for all."""
    user = i % 500
    return {
        "action": ACTIONS[i % len(ACTIONS)],
        "actor": {
            "id": f"user-{user}",
            "type": "user",
            "name": f"User {user}",
            "email": f"user{user}@example.com",
        },
        "entity": {"type": "document", "id": f"{run}-{i}", "name": f"Document {i}"},
        "tenant": f"tenant-{i % 20}",
        "request": {
            "id": f"req-{run}-{i}",
            "ip": "203.0.113.7",
            "method": "POST",
            "path": "/api/documents",
            "user_agent": "bench/1.0",
            "status": 200,
            "duration_ms": 12.5,
        },
        "changes": [{"field": "title", "old": "Draft", "new": f"Report {i}"}],
        "metadata": {"i": i, "client": "bench", "note": "quarterly flamingo report"},
        "source": run,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """CPU time of a process; with children: its live children and the reaped ones too."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat (1-based).
    own = int(fields[11]) + int(fields[12])
    total = own / CLOCK_TICKS
    if with_children:
        total += (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
        for child in children(pid):
            total += cpu_seconds(child, with_children=True)
    return total


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in found]
    except OSError:
        pass
    result = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                result.append(int(entry.name))
    return result


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of /proc/PID/status in KiB (VmHWM: peak RSS, VmRSS: now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def postmaster_pid(stack: EmbeddedStack) -> int:
    return int((stack.postgres.pgdata / "postmaster.pid").read_text().split()[0])


class Stack:
    """A fresh Valkey + PostgreSQL (service/embedded/servers.py) in a temp dir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="auditq-bench-"))
        self.stack = EmbeddedStack(self.dir)

    def __enter__(self) -> Stack:
        self.stack.start()
        self.stack.postgres.create_database(DATABASE)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stack.stop()
        self.stack.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def redis_url(self) -> str:
        return self.stack.valkey.url

    @property
    def database_url(self) -> str:
        return self.stack.postgres.url_for(DATABASE)

    async def migrate(self) -> None:
        await db.migrate(self.database_url)

    async def redis_used_memory(self) -> int:
        """Valkey's `used_memory`: the bytes it holds, keys and buffers."""
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            return int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()

    def server_cpu(self) -> dict[str, float]:
        """CPU seconds so far of PostgreSQL (every process) and Valkey."""
        valkey = self.stack.valkey.pid
        return {
            "postgres": cpu_seconds(postmaster_pid(self.stack)),
            "valkey": cpu_seconds(valkey) if valkey else 0.0,
        }

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an auditq process on this stack."""
        env = dict(os.environ)
        seal_key = self.dir / "seal-key"
        load_or_create_private_key(seal_key)  # a worker refuses to start without the key
        env.update(
            AUDITQ_REDIS_URL=self.redis_url,
            AUDITQ_DATABASE_URL=self.database_url,
            AUDITQ_DATA_DIR=str(self.dir / "auditq"),
            AUDITQ_SEAL_KEY_FILE=str(seal_key),
            # The bench's database user is the embedded superuser (the same for every side
            # of a comparison); a deployment's worker refuses one.
            AUDITQ_ALLOW_PRIVILEGED_ROLE="1",
        )
        env.update(extra)
        return env


async def count_rows(conn: asyncpg.Connection, source: str | None = None) -> int:
    if source is None:
        return int(await conn.fetchval("SELECT count(*) FROM audit_log"))
    return int(await conn.fetchval("SELECT count(*) FROM audit_log WHERE source = $1", source))


async def wait_for_rows(
    conn: asyncpg.Connection,
    expected: int,
    *,
    timeout_s: float,
    check: Callable[[], None] | None = None,
    slow_poll: float = 0.5,
    fast_poll: float = 0.02,
) -> float | None:
    """Wait until `expected` rows are visible; return the wall time they were (None: timeout).

    A count is a scan, so it polls seldom while far from done: it sleeps half the time the
    rows seen so far say is left (between `fast_poll` and `slow_poll`), so the end is seen
    within about `fast_poll` whatever the rate. (A fixed slow pace until 90 % snapped the end
    of a two-second run to the next half second: 20 % off, by the rate alone.) `check` runs
    each poll and may raise (a producer that died)."""
    deadline = time.monotonic() + timeout_s
    last: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        seen = await count_rows(conn)
        now = time.monotonic()
        if seen >= expected:
            return time.time()
        if check is not None:
            check()
        pause = slow_poll
        if last is not None and seen > last[1]:
            rate = (seen - last[1]) / (now - last[0])
            pause = min(slow_poll, max(fast_poll, (expected - seen) / rate / 2))
        last = (now, seen)
        await asyncio.sleep(pause)
    return None


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


BASELINE_PACKAGE = "_baseline_service"  # where load_baseline puts an older `service`
_IMPORT_RE = re.compile(r"\b(from|import)( +)service\b")


def load_baseline(revision: str) -> str:
    """Import `service` as it was at a git revision, as a package of its own beside today's
    (so one process can time both, alternately, on the same loaded moment); return its name.

    Its files come from `git archive`, their `service` imports renamed to the package's."""
    if BASELINE_PACKAGE in sys.modules:
        return BASELINE_PACKAGE
    target = Path(tempfile.mkdtemp(prefix="auditq-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "service"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    (target / "service").rename(target / BASELINE_PACKAGE)
    for path in (target / BASELINE_PACKAGE).rglob("*.py"):
        text = path.read_text()
        path.write_text(_IMPORT_RE.sub(rf"\1\2{BASELINE_PACKAGE}", text))
    sys.path.insert(0, str(target))
    importlib.import_module(BASELINE_PACKAGE)
    return BASELINE_PACKAGE
