"""`auditq run` on the embedded default: passwords everywhere, runtime roles only in .auditq/env,
nothing opened to other users, checkpoints made and verified end to end."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from service.embedded.servers import EmbeddedStack, free_port
from service.settings import read_env_file
from tests.support.polling import wait_for

AUDITQ = [sys.executable, "-m", "service.cli"]


async def auditq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one auditq command to its end, off the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [*AUDITQ, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Run:
    """One `auditq run` in its own session, its output collected."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITQ_", "PYTEST_"))} | {
            "AUDITQ_DATA_DIR": str(data_dir),
            "AUDITQ_HTTP_PORT": str(port),
            "AUDITQ_SEAL_INTERVAL_S": "0.5",
        }
        self.env = env
        self.out = data_dir.parent / f"run-{port}.out"
        with open(self.out, "w") as out:
            self.process = subprocess.Popen(
                [*AUDITQ, "run"], stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.out.read_text()

    async def running(self) -> None:
        async def up() -> bool:
            assert self.process.poll() is None, self.output()
            return "auditq is running" in self.output()

        await wait_for(up, within_s=90, interval=0.2)

    async def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(self.process.wait, 60)


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="auditq-run-"))
    yield parent / ".auditq"
    EmbeddedStack(parent / ".auditq").destroy()
    await asyncio.to_thread(shutil.rmtree, parent, True)


async def test_the_embedded_default_is_locked_down_and_sealed(data_dir: Path) -> None:
    parent_mode = mode(data_dir.parent)
    run = Run(data_dir, free_port())
    try:
        await run.running()
        assert "admin token (also kept in" in run.output()
        env_file = data_dir / "env"
        assert mode(env_file) == 0o600 and mode(data_dir) == 0o700
        urls = read_env_file(env_file)
        assert set(urls) == {
            "AUDITQ_REDIS_URL",
            "AUDITQ_DATABASE_URL",
            "AUDITQ_WORKER_DATABASE_URL",
        }
        assert urls["AUDITQ_DATABASE_URL"].startswith("postgresql://auditq_api:")
        assert urls["AUDITQ_WORKER_DATABASE_URL"].startswith("postgresql://auditq_worker:")
        for secret in (
            data_dir / "admin-token",
            data_dir / "seal-key",
            data_dir / "valkey" / "password",
            data_dir / "valkey" / "valkey.conf",
            *(data_dir / "postgres" / "credentials").iterdir(),
        ):
            assert mode(secret) == 0o600, secret
        assert mode(data_dir.parent) == parent_mode  # nothing opened to others

        # A local account without the passwords gets nowhere.
        port = urls["AUDITQ_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0]
        for role in ("postgres", "auditq_owner", "auditq_api"):
            with pytest.raises(
                (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
            ):
                await asyncpg.connect(f"postgresql://{role}@127.0.0.1:{port}/auditq")
        valkey_port = urls["AUDITQ_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{valkey_port}/0")
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.lpush("arq:queue:audit-logs", "forged")
        await anonymous.aclose()

        # The runtime role cannot rewrite what it stored.
        emit = await auditq(run.env, "emit", "auth.login", "--actor", "u-1")
        assert emit.returncode == 0, emit.stderr
        api = await asyncpg.connect(urls["AUDITQ_DATABASE_URL"])
        try:

            async def sealed() -> bool:  # a leaf of the transparency log
                return bool(
                    await api.fetchval(
                        "SELECT count(*) FROM tlog_batch b, audit_log a "
                        "WHERE a.action = 'auth.login' AND b.row_seqs @> a.seq"
                    )
                )

            await wait_for(sealed, within_s=60)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await api.execute("DELETE FROM audit_log")
        finally:
            await api.close()
        verify = await auditq(run.env, "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "0 findings" in verify.stdout.splitlines()[-1]
    finally:
        await run.stop()
    assert run.process.returncode == 0, run.output()

    # A second run reuses the data and does not print the token again.
    again = Run(data_dir, free_port())
    try:
        await again.running()
        assert "admin token: kept in" in again.output()
        assert (data_dir / "admin-token").read_text().strip() not in again.output()
    finally:
        await again.stop()
