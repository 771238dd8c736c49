"""Where the suite's Redis and PostgreSQL are: the ones named by AUDITQ_TEST_*_URL, else
embedded ones (the `servers` fixture of tests/conftest.py starts them)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from service.embedded.servers import EmbeddedStack

# Its own name where several runs share one server (AUDITQ_TEST_DATABASE_URL).
TEMPLATE_DB = os.environ.get("AUDITQ_TEST_TEMPLATE_DB", "auditq_test_template")


class Servers:
    """Where the suite's Redis and PostgreSQL are, and the stack when it is ours."""

    def __init__(self, redis_url: str, postgres_url: str, stack: EmbeddedStack | None) -> None:
        self.redis_url = redis_url
        self.postgres_url = postgres_url  # a maintenance database: databases are made from it
        self.stack = stack

    def database_url(self, name: str) -> str:
        base, _, _ = self.postgres_url.rpartition("/")
        return f"{base}/{name}"


def server_dir() -> Path:
    """A directory for a server's data that its unprivileged user can reach.

    Not under pytest's tmp_path: pytest resets /tmp/pytest-of-<user> to mode 0700, which
    locks out the system user the embedded PostgreSQL runs as (when the suite runs as root).
    """
    return Path(tempfile.mkdtemp(prefix="auditq-test-"))
