"""The enqueue function library in the worker's Redis: loaded at start, reloaded once lost."""

from __future__ import annotations

import logging

from service.queue import LIBRARY_NAME, load_functions
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
        "with EVAL (service/enqueue.lua)"
    )
