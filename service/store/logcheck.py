"""The rows of the transparency log checked on every core, in the verifying snapshot.

`auditq verify` rebuilds a leaf for every stored row. With the compiled leaf writer
(service/store/copyleaf.py) that is about a µs of this process's CPU a row, so the rows are
checked here, on a connection per core (PostgreSQL's backends use the other cores); without
it, several µs of Python a row, so they are checked in processes of their own, each with its
own connection. Either way every connection reads in the verifying transaction's snapshot,
and the verifier gets back only what differs (service/integrity/logverify.py, `RowsCheck`).

The batches are cut into pieces, handed to whichever connection or process is free, so no
core idles while another finishes a long run; each opens its connection once, for all the
pieces it checks.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.util
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import asyncpg

from service.integrity.logverify import Mismatch, RowsCheck
from service.store import copyleaf
from service.store.copyleaf import check_piece
from service.store.leaves import DATESTYLE, SEARCH_PATH
from service.store.verify_reads import int8_ranges

_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
Job = tuple[int, str, bytes]
IN_PLACE_BELOW = 50_000  # rows: fewer are checked in this process, on one more connection
PIECE_ROWS = 5_000  # rows a process checks at a time
# Rows a connection checks at a time (a batch of the sealer's): each piece's query is planned
# over every partition, some 0.3 µs of PostgreSQL's CPU a row at 5,000 rows a piece.
CONNECTION_PIECE_ROWS = 20_000
Result = tuple[int, int, list[Mismatch]]
HB = 32


def processes() -> int:
    """One process a core (at least two: one reads while another hashes)."""
    return max(2, os.cpu_count() or 1)


def rows_check(url: str) -> RowsCheck:
    """The check `auditq verify` runs: with the compiled C (service/store/copyleaf.py), on a
    connection per core in this process (the C writes and hashes a leaf in about a µs, less
    than starting processes costs a row: their interpreters and imports, some 0.2 s of CPU
    each); without it, in a process per core."""
    return on_connections(url) if copyleaf.available() else in_processes(url)


def on_connections(
    url: str, connections: int | None = None, *, piece_rows: int = CONNECTION_PIECE_ROWS
) -> RowsCheck:
    """A RowsCheck that spreads the batches, in pieces, over `connections` connections of
    this process (PostgreSQL's backends run on the other cores)."""

    async def check(snapshot: str, jobs: list[Job]) -> list[Result]:
        if not _SNAPSHOT_ID.match(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        pieces = [p for job in jobs for p in cut(job, piece_rows)]
        return await _on_connections(url, snapshot, jobs, pieces, connections or processes())

    return check


def in_processes(
    url: str,
    workers: int | None = None,
    *,
    in_place_below: int | None = None,
    piece_rows: int = PIECE_ROWS,
) -> RowsCheck:
    """A RowsCheck that spreads the batches, in pieces, over `workers` processes."""

    async def check(snapshot: str, jobs: list[Job]) -> list[Result]:
        if not _SNAPSHOT_ID.match(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        below = IN_PLACE_BELOW if in_place_below is None else in_place_below
        pieces = [p for job in jobs for p in cut(job, piece_rows)]
        if sum(len(stored) for _, _, stored in jobs) < below * HB:
            # Not worth starting processes: here, on one more connection.
            return await _on_connections(url, snapshot, jobs, pieces, 1)
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # no copy of this event loop's state
        with ProcessPoolExecutor(
            max_workers=workers or processes(), mp_context=context, initializer=gc.disable
        ) as pool:
            parts = await asyncio.gather(
                *(loop.run_in_executor(pool, _check, url, snapshot, piece) for piece in pieces)
            )
        return join(jobs, pieces, parts)

    return check


# A piece of a batch: the batch's first leaf, the piece's offset in it, its row seqs (an
# int8 multirange's text) and their stored leaf hashes.
Piece = tuple[int, int, str, bytes]


def cut(job: Job, rows: int) -> list[Piece]:
    """A batch in pieces of at most `rows` rows, in order."""
    first, row_seqs, stored = job
    pieces: list[Piece] = []
    ranges: list[str] = []
    offset = count = 0

    def close() -> None:
        end = offset + count
        text = "{" + ",".join(ranges) + "}"
        pieces.append((first, offset, text, stored[offset * HB : end * HB]))

    for lo, hi in int8_ranges(row_seqs):
        while lo < hi:
            take = min(hi - lo, rows - count)
            ranges.append(f"[{lo},{lo + take})")
            lo += take
            count += take
            if count == rows:
                close()
                offset, count, ranges = offset + count, 0, []
    if ranges or not pieces:
        close()
    return pieces


def join(
    jobs: list[Job], pieces: list[Piece], results: list[tuple[int, list[Mismatch]]]
) -> list[Result]:
    """The pieces' results as their batches' (mismatch offsets counted in the batch)."""
    by_first: dict[int, tuple[int, list[Mismatch]]] = {first: (0, []) for first, _, _ in jobs}
    for (first, offset, _, _), (found, mismatches) in zip(pieces, results, strict=True):
        total, kept = by_first[first]
        kept.extend((offset + at, seq, row_id, leaf) for at, seq, row_id, leaf in mismatches)
        by_first[first] = (total + found, kept)
    return [(first, *by_first[first]) for first, _, _ in jobs]


# A pool process's connection, opened by its first piece, in the snapshot given.
_open: dict[str, Any] = {}


def _check(url: str, snapshot: str, piece: Piece) -> tuple[int, list[Mismatch]]:
    """Check one piece in a pool process (its collector is off, `initializer`: a piece's
    thousands of records make no cycles, and collection passes over them cost about a
    fifth of the check)."""
    if _open.get("snapshot") != snapshot:
        _close()
        loop = asyncio.new_event_loop()
        conn = loop.run_until_complete(_connect(url, snapshot))
        _open.update(snapshot=snapshot, loop=loop, conn=conn)
        multiprocessing.util.Finalize(None, _close, exitpriority=10)
    loop, conn = _open["loop"], _open["conn"]
    _, _, row_seqs, stored = piece
    return loop.run_until_complete(check_piece(conn, row_seqs, stored))  # type: ignore[no-any-return]


async def _connect(url: str, snapshot: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await conn.execute(DATESTYLE)  # the times' text form
    await conn.execute(SEARCH_PATH)
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    # SET TRANSACTION takes no parameters; the id was checked by the caller.
    await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    return conn


def _close() -> None:
    """At the pool process's exit: end its read-only transaction and connection."""
    loop, conn = _open.pop("loop", None), _open.pop("conn", None)
    _open.pop("snapshot", None)
    if loop is not None and conn is not None:
        loop.run_until_complete(conn.close())
        loop.close()


async def _on_connections(
    url: str, snapshot: str, jobs: list[Job], pieces: list[Piece], connections: int
) -> list[Result]:
    """Check the pieces in this process on `connections` connections (each in the snapshot),
    each piece taken by whichever connection is free."""
    queue = list(reversed(pieces))
    found: dict[int, tuple[int, list[Mismatch]]] = {}

    async def work() -> None:
        conn = await _connect(url, snapshot)
        try:
            while queue:
                piece = queue.pop()
                _, _, row_seqs, stored = piece
                found[id(piece)] = await check_piece(conn, row_seqs, stored)
        finally:
            await conn.close()

    await asyncio.gather(*(work() for _ in range(max(1, min(connections, len(pieces))))))
    return join(jobs, pieces, [found[id(piece)] for piece in pieces])
