"""The rows of the transparency log checked in processes of their own, on every core.

`auditq verify` rebuilds a leaf for every stored row (a read, the canonical JSON, a hash:
several µs of Python each); split over processes, each with its own connection in the
verifying transaction's snapshot, the rows are checked by every core at once and the
verifier gets back only what differs (service/integrity/logverify.py, `RowsCheck`).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor

import asyncpg

from service.integrity.logverify import Mismatch, RowsCheck, compare_rows
from service.store.leaves import row_leaf_data
from service.store.seals import NEW_ROWS

_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
Job = tuple[int, str, bytes]
IN_PLACE_BELOW = 50_000  # rows: fewer are checked in this process, on one more connection
Result = tuple[int, int, list[Mismatch]]


def processes() -> int:
    """One process a core (at least two: one reads while another hashes)."""
    return max(2, os.cpu_count() or 1)


def in_processes(
    url: str, workers: int | None = None, *, in_place_below: int | None = None
) -> RowsCheck:
    """A RowsCheck that spreads the batches over `workers` processes."""

    async def check(snapshot: str, jobs: list[Job]) -> list[Result]:
        if not _SNAPSHOT_ID.match(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        below = IN_PLACE_BELOW if in_place_below is None else in_place_below
        if sum(len(stored) for _, _, stored in jobs) < below * 32:
            return await _check_async(url, snapshot, jobs)  # not worth starting processes
        count = workers or processes()
        # Contiguous runs of batches, a few per process so a slow one does not hold the end.
        size = max(1, -(-len(jobs) // (count * 4)))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # no copy of this event loop's state
        with ProcessPoolExecutor(
            max_workers=count, mp_context=context, initializer=gc.disable
        ) as pool:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, _check, url, snapshot, chunk) for chunk in chunks)
            )
        return [result for part in parts for result in part]

    return check


def _check(url: str, snapshot: str, jobs: list[Job]) -> list[Result]:
    """Check a chunk in a pool process. Its collector is off (`initializer`): a batch's
    rows are tens of thousands of records that make no cycles, and each collection pass
    over them cost more than reading them; what cycles the chunk made go when it is done."""
    try:
        return asyncio.run(_check_async(url, snapshot, jobs))
    finally:
        gc.collect()


async def _check_async(url: str, snapshot: str, jobs: list[Job]) -> list[Result]:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # SET TRANSACTION takes no parameters; the id was checked by the caller.
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            results: list[Result] = []
            for first, row_seqs, stored in jobs:
                rows = await conn.fetch(NEW_ROWS, row_seqs, timeout=None)
                results.append((first, *compare_rows(row_seqs, rows, stored, row_leaf_data)))
            return results
    finally:
        await conn.close()
