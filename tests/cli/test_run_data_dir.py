"""`auditq run` and its data directory: one stack per directory; removing it resets it all."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.embedded import servers as embedded
from service.embedded.servers import EmbeddedStack, free_port
from tests.integrity.test_embedded import Run, auditq


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="auditq-run-"))
    yield parent / ".auditq"
    EmbeddedStack(parent / ".auditq").destroy()
    await asyncio.to_thread(shutil.rmtree, parent, True)


async def ready(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status


async def test_a_second_run_on_a_data_dir_in_use_says_so_and_touches_nothing(
    data_dir: Path,
) -> None:
    port = free_port()
    first = Run(data_dir, port)
    try:
        await first.running()
        postmaster = EmbeddedStack(data_dir).postgres.pgdata / "postmaster.pid"
        kept = {p: p.read_bytes() for p in (data_dir / "env", data_dir / "admin-token", postmaster)}

        second = await auditq({**first.env, "AUDITQ_HTTP_PORT": str(free_port())}, "run")

        assert second.returncode != 0
        said = second.stdout + second.stderr
        assert f"already running (pid {first.process.pid})" in said, said
        assert len(said.strip().splitlines()) == 1, said  # one line, no pg_ctl output
        assert {p: p.read_bytes() for p in kept} == kept  # env, token, the server: untouched
        assert await ready(port) == 200
        emit = await auditq(first.env, "emit", "auth.login", "--actor", "u-1")
        assert emit.returncode == 0, emit.stderr
    finally:
        await first.stop()
    assert first.process.returncode == 0, first.output()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only is the cluster kept elsewhere")
async def test_removing_the_data_dir_resets_the_embedded_stack(data_dir: Path) -> None:
    first = Run(data_dir, free_port())
    try:
        await first.running()
    finally:
        await first.stop()
    assert first.process.returncode == 0, first.output()
    home = EmbeddedStack(data_dir).postgres.home
    assert home.is_relative_to(embedded.PG_SYSTEM_HOME) and home.exists()

    shutil.rmtree(data_dir)  # `rm -rf .auditq`
    port = free_port()
    again = Run(data_dir, port)
    try:
        await again.running()  # no "password authentication failed" with the old cluster
        assert "admin token (also kept in" in again.output()
        assert await ready(port) == 200
        emit = await auditq(again.env, "emit", "auth.login", "--actor", "u-1")
        assert emit.returncode == 0, emit.stderr
    finally:
        await again.stop()
    assert again.process.returncode == 0, again.output()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only is the cluster kept elsewhere")
async def test_clusters_of_removed_data_dirs_do_not_pile_up(data_dir: Path) -> None:
    gone = data_dir.parent / "gone"
    stack = EmbeddedStack(gone)
    await asyncio.to_thread(stack.start)
    await asyncio.to_thread(stack.stop)
    orphan = stack.postgres.home
    shutil.rmtree(gone)  # its data directory removed without `destroy`
    assert orphan.exists()

    live = EmbeddedStack(data_dir)
    await asyncio.to_thread(live.start)
    try:
        assert not orphan.exists()
        assert live.postgres.home.exists()
    finally:
        await asyncio.to_thread(live.stop)
