"""A stop without Redis leaves arq's bookkeeping of a job cut short failing in tasks nobody
awaits any more: the worker's loop says so in one line, never with a traceback."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from workers.runner import report_redis_outages

REFUSED = "Error 111 connecting to 127.0.0.1:1. Connect call failed ('127.0.0.1', 1)."


async def _record_end() -> None:
    """As arq's shielded finish_job of a job cut short: its Redis write fails, unawaited."""
    await asyncio.sleep(0)
    raise RedisConnectionError(REFUSED)


async def _running_job() -> None:
    """As arq's run_job still running at the loop's end: cancelled, it writes to Redis."""
    try:
        await asyncio.sleep(3600)
    finally:
        raise RedisConnectionError(REFUSED)


async def _bug() -> None:
    raise ValueError("a bug")


def _run(*, quiet: bool, bug: bool = False) -> None:
    async def main() -> None:
        if quiet:
            report_redis_outages()
        loop = asyncio.get_running_loop()
        loop.create_task(_record_end())  # noqa: RUF006 (as arq: its end is never retrieved)
        loop.create_task(_running_job())  # noqa: RUF006
        if bug:
            loop.create_task(_bug())  # noqa: RUF006
        await asyncio.sleep(0.01)

    asyncio.run(main())
    gc.collect()  # the unretrieved task is reported when collected


@pytest.mark.unit
def test_redis_failures_of_unawaited_tasks_are_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        _run(quiet=False)
    assert any(r.exc_info for r in caplog.records), "asyncio's own report has the stack"
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        _run(quiet=True)
    assert not [r for r in caplog.records if r.exc_info]
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert "ended without Redis (ConnectionError: Error 111" in said[0].getMessage()


@pytest.mark.unit
def test_any_other_failure_is_still_reported_with_its_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        _run(quiet=True, bug=True)
    stacks = [r for r in caplog.records if r.exc_info]
    assert len(stacks) == 1 and isinstance(stacks[0].exc_info[1], ValueError)  # type: ignore[index]
