"""The sealer: every seal interval, one signed checkpoint over every row stored since the last.

Each worker runs one; an advisory lock lets only one of them seal at a time, so the chain
never forks. docs/integrity.md, "Sealing", has the design.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.store.seals import seal_once

logger = logging.getLogger(__name__)


async def run(pool: asyncpg.Pool, key: Ed25519PrivateKey, *, interval_s: float) -> None:
    """Seal what is pending every `interval_s` until cancelled; a failure waits for the next."""
    # Half the interval between attempts: a row waits at most about one interval.
    pause = interval_s / 2
    while True:
        try:
            async with pool.acquire() as conn:
                checkpoint = await seal_once(conn, key)
            if checkpoint is not None:
                logger.debug(
                    "checkpoint %d sealed: %d rows, %d actions",
                    checkpoint.n,
                    checkpoint.row_count,
                    checkpoint.action_count,
                )
        except Exception as exc:  # the database away: the next round seals what waited
            logger.warning("sealing failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(pause)
