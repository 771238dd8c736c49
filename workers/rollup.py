"""The rollup fold: every interval, the rows stored since the last fold join the statistics rollup.

Each worker runs one; the rollup lock lets one fold at a time (another worker's just skips
that round). service/store/rollup.py has the design; until a row is folded the statistics
route counts it from the row itself, so the interval bounds that work, not correctness.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from service.store.rollup import FOLD_ENTRIES, fold_once

logger = logging.getLogger(__name__)

FOLD_INTERVAL = 2.0  # seconds between folds while nothing is left pending


async def run(pool: asyncpg.Pool, *, interval_s: float = FOLD_INTERVAL) -> None:
    """Fold what is pending every `interval_s` until cancelled; a failure waits for the next."""
    while True:
        folded = 0
        try:
            async with pool.acquire() as conn:
                folded = await fold_once(conn) or 0
        except Exception as exc:  # the database away: the next round folds what waited
            logger.warning("folding the statistics rollup failed: %s: %s", type(exc).__name__, exc)
        if folded < FOLD_ENTRIES:  # a full fold: more is waiting, go on at once
            await asyncio.sleep(interval_s)
