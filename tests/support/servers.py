"""Where the suite's Redis and PostgreSQL are: the ones named by AUDITQ_TEST_*_URL, else
embedded ones (the `servers` fixture of tests/conftest.py starts them)."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import redis

from service.embedded.servers import EmbeddedStack
from service.queue.keys import IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, RETRY_PREFIX

# Its own name where several runs share one server (AUDITQ_TEST_DATABASE_URL).
TEMPLATE_DB = os.environ.get("AUDITQ_TEST_TEMPLATE_DB", "auditq_test_template")

# Every queue of this run is named test-<run>-<random>: in a Redis shared with other runs
# (AUDITQ_TEST_REDIS_URL) the run's keys are told apart by it and deleted when it ends.
RUN_ID = os.environ.get("AUDITQ_TEST_RUN_ID") or uuid.uuid4().hex[:8]
QUEUE_PREFIX = f"test-{RUN_ID}-"
# arq's keys of a queue (the queue itself, its health check) start with its name; auditq's
# own keys of a queue with auditq:<queue>: (service/queue/keys.py, dead_letter.py).
RUN_KEY_PATTERNS = (f"{QUEUE_PREFIX}*", f"auditq:{QUEUE_PREFIX}*")
JOB_KEY_PREFIXES = (JOB_PREFIX, IN_PROGRESS_PREFIX, RETRY_PREFIX, RESULT_PREFIX)


def new_queue_name() -> str:
    """A queue of a test's own: its keys never meet another test's or another run's."""
    return f"{QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"


def delete_run_keys(redis_url: str) -> int:
    """Delete every key of this run's queues from the Redis at `redis_url`; how many.

    The jobs still in a queue (its sorted set of job ids) go too: arq keeps each under
    arq:job:<id> (and arq:in-progress:, arq:retry:, arq:result:), outside the queue's prefix.
    """
    client = redis.Redis.from_url(redis_url)
    keys: list[bytes] = []
    try:
        for pattern in RUN_KEY_PATTERNS:
            keys += client.scan_iter(match=pattern, count=1000)
        for key in keys:
            if client.type(key) == b"zset" and not key.startswith(b"auditq:"):
                for job_id in client.zrange(key, 0, -1):
                    keys += [prefix.encode() + job_id for prefix in JOB_KEY_PREFIXES]
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += int(client.delete(*keys[start : start + 500]))
    finally:
        client.close()
    return deleted


class Servers:
    """Where the suite's Redis and PostgreSQL are, and the stack when it is ours."""

    def __init__(self, redis_url: str, postgres_url: str, stack: EmbeddedStack | None) -> None:
        self.redis_url = redis_url
        self.postgres_url = postgres_url  # a maintenance database: databases are made from it
        self.stack = stack

    def copy_database(self, name: str, template: str) -> str:
        """The statement that makes database `name` a copy of `template`.

        On the suite's own server, STRATEGY FILE_COPY (PostgreSQL 15+; the embedded one is 18):
        the files copied whole instead of every page read and logged (WAL_LOG, the default).
        Measured in the suite's fixtures: 0.05-0.11 s a copy against 0.34-0.43 s with WAL_LOG
        in one comparison, within the machine's noise in others. Its two checkpoints cost
        little there (fsync is off); a server not ours (AUDITQ_TEST_DATABASE_URL) gets no
        forced checkpoint and keeps its default, whatever its version.
        """
        strategy = " STRATEGY FILE_COPY" if self.stack is not None else ""
        return f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'

    def database_url(self, name: str) -> str:
        base, _, _ = self.postgres_url.rpartition("/")
        return f"{base}/{name}"


def server_dir() -> Path:
    """A directory for a server's data that its unprivileged user can reach.

    Not under pytest's tmp_path: pytest resets /tmp/pytest-of-<user> to mode 0700, which
    locks out the system user the embedded PostgreSQL runs as (when the suite runs as root).
    """
    return Path(tempfile.mkdtemp(prefix="auditq-test-"))
