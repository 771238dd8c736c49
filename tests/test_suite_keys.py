"""The suite leaves nothing behind in a Redis it shares with others (AUDITQ_TEST_REDIS_URL, as
in the integration pass of .ci/run): when a run ends, the keys of its queues are deleted, and
no key of another run or of anyone else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tests.support.servers import Servers

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 240.0  # a pytest process starting and running one test on a loaded machine

# A run of one test on the suite's fixtures, as every test module uses them: keys of its queue
# as arq and auditq make them, some without a TTL.
INNER_TEST = """
from pathlib import Path

from service.queue.keys import counters_key, live_key


async def test_leaves_keys(redis, queue_name):
    job_id = f"job-{queue_name}"
    await redis.zadd(queue_name, {job_id: 1})  # arq's queue: job ids by time, under its name
    await redis.set(f"arq:job:{job_id}", b"job")  # a job left in it, and its run
    await redis.set(f"arq:in-progress:{job_id}", b"1")
    await redis.set(f"{queue_name}:health-check", b"ok", ex=3600)
    await redis.hset(counters_key(queue_name), "stored", 1)
    await redis.xadd(live_key(queue_name), {"seq": "1"})
    Path(__file__).with_name("queue").write_text(queue_name)
"""


def run_pytest(test_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest on `test_file` with the suite's fixtures and settings, as another run."""
    pytest_args = ["-q", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    pytest_args += ["-c", str(REPO / "pyproject.toml"), str(test_file)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


async def test_a_run_deletes_the_keys_of_its_queues_and_no_other(
    servers: Servers, redis: aioredis.Redis, tmp_path: Path
) -> None:
    client: Any = redis  # redis-py's async methods are typed as sync-or-async unions
    run_id = f"k{uuid.uuid4().hex[:7]}"
    other = f"o{uuid.uuid4().hex[:7]}"
    foreign = [
        f"test-{other}-q",  # another run's queue, and its auditq keys
        f"auditq:test-{other}-q:counters",
        f"test-{run_id}",  # no queue of this run: its names go on with a dash
        f"auditq:{run_id}",
        f"unrelated-{run_id}",
        f"arq:job:{run_id}",  # a job of no queue of this run
    ]
    for key in foreign:
        await client.set(key, b"kept")
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(
        AUDITQ_TEST_REDIS_URL=servers.redis_url,
        AUDITQ_TEST_DATABASE_URL=servers.postgres_url,
        AUDITQ_TEST_RUN_ID=run_id,
        AUDITQ_TEST_TEMPLATE_DB=f"auditq_test_template_{run_id}",  # never this run's template
    )
    try:
        run = await asyncio.to_thread(run_pytest, tmp_path / "test_inner.py", env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 passed" in run.stdout, run.stdout
        queue = (tmp_path / "queue").read_text()
        assert queue.startswith(f"test-{run_id}-")
        left = [k async for k in client.scan_iter(match=f"*{run_id}-*", count=1000)]
        assert left == []  # the queue's own keys, auditq's beside them, its jobs': all gone
        assert [key for key in foreign if not await client.exists(key)] == []
    finally:
        await client.delete(*foreign)
