"""The suite's one way to wait: poll a condition until it holds, or fail after a bound.

A bound is a safety net, never a speed claim: it is what a loaded 2-core CI machine needs
with room to spare (docs/time-bounds.md), and a condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

DEFAULT_WITHIN = 30.0  # seconds
DEFAULT_INTERVAL = 0.05  # seconds


async def wait_for(
    condition: Callable[[], Awaitable[bool] | bool],
    *,
    within_s: float = DEFAULT_WITHIN,
    what: str = "condition",
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """Poll `condition` (sync or async) until it holds; fail the test after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {within_s} s")
        await asyncio.sleep(interval)


def wait_for_sync(
    condition: Callable[[], bool],
    *,
    within_s: float = DEFAULT_WITHIN,
    what: str = "condition",
    interval: float = DEFAULT_INTERVAL,
    ignore: tuple[type[BaseException], ...] = (),
) -> None:
    """The same from code without an event loop; errors of `ignore` count as "not yet"."""
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(*ignore):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {within_s} s")
        time.sleep(interval)
