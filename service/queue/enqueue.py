"""The enqueue, shipped as one Lua file (enqueue.lua): run as a script (EVAL) as it is, and
loaded as the function library LIBRARY_NAME (FCALL ENQUEUE_FUNCTION) behind a shebang line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

ENQUEUE_SCRIPT = (Path(__file__).parent / "enqueue.lua").read_text()
LIBRARY_NAME = "auditq"
ENQUEUE_FUNCTION = "auditq_enqueue"
DRAIN_FUNCTION = "auditq_drain"  # run by workers: the producer user's batches into jobs
MAX_JOB_BYTES = 8 * 1024 * 1024  # default of AUDITQ_MAX_JOB_BYTES
_MAX_JOB_BYTES_LINE = re.compile(r"^local MAX_JOB_BYTES = \d+$", re.MULTILINE)


def enqueue_script(max_job_bytes: int = MAX_JOB_BYTES) -> str:
    """The enqueue script (EVAL) refusing payloads over `max_job_bytes`."""
    if max_job_bytes == MAX_JOB_BYTES:
        return ENQUEUE_SCRIPT
    return _MAX_JOB_BYTES_LINE.sub(f"local MAX_JOB_BYTES = {int(max_job_bytes)}", ENQUEUE_SCRIPT)


def enqueue_library(max_job_bytes: int = MAX_JOB_BYTES) -> str:
    """The function library auditq loads into Redis (FUNCTION LOAD)."""
    return f"#!lua name={LIBRARY_NAME}\n" + enqueue_script(max_job_bytes)


def is_function_missing(exc: BaseException) -> bool:
    """Tell whether a Redis error says the enqueue function is not loaded (a fresh server,
    FUNCTION FLUSH, or a failover to a server that never had it)."""
    return "function not found" in str(exc).lower()


def has_no_functions(exc: BaseException) -> bool:
    """Tell whether a Redis error says the server knows no functions (before Redis 7)."""
    text = str(exc).lower()
    return "unknown command" in text and ("fcall" in text or "function" in text)


async def load_functions(redis: Any, *, max_job_bytes: int = MAX_JOB_BYTES) -> bool:
    """Load (or replace) auditq's function library; False when the server has no functions."""
    try:
        await redis.function_load(enqueue_library(max_job_bytes), replace=True)
    except ResponseError as exc:
        if has_no_functions(exc):
            return False
        raise
    return True
