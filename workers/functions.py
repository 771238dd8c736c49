"""The enqueue function library in the worker's Redis: loaded at start, reloaded once lost."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from service.queue.enqueue import DRAIN_FUNCTION, LIBRARY_NAME, is_function_missing, load_functions
from workers.state import WorkerState

logger = logging.getLogger(__name__)


async def ensure_loaded(state: WorkerState, *, check: bool = True) -> None:
    """Load auditq's function library unless the server holds it (or has no functions).

    A Redis restarted without its data, a FUNCTION FLUSH or a failover to a server that never
    had it loses the library, and producers' FCALLs fail until a worker loads it again.
    """
    redis = state.redis
    if state.no_functions:
        return
    if check and await redis.function_list(library=LIBRARY_NAME):
        return
    if await load_functions(redis, max_job_bytes=state.settings.max_job_bytes):
        if check:
            logger.warning("Redis had lost auditq's function library: loaded it again")
        return
    state.no_functions = True
    logger.warning(
        "this Redis has no functions (before Redis 7): producers use the enqueue script "
        "with EVAL (service/queue/enqueue.lua)"
    )


DRAIN_BATCH = 200  # inbox entries moved into jobs per call


async def drain(state: WorkerState, redis: Any) -> int:
    """Move what the producer user left in the queue's inbox into jobs; how many moved."""
    if state.no_functions:
        return 0
    try:
        moved = await redis.fcall(DRAIN_FUNCTION, 1, state.settings.queue, DRAIN_BATCH)
    except ResponseError as exc:
        if is_function_missing(exc):
            await ensure_loaded(state, check=False)  # a Redis that lost the library
        elif not state.drain_failing:  # e.g. a worker user without the inbox's rights
            state.drain_failing = True
            logger.error("the producer inbox cannot be moved into jobs: %s", exc)
        return 0
    state.drain_failing = False
    return int(moved)
