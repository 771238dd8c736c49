"""Verify the transparency log: rebuild its leaves from the rows and actions, check every
checkpoint's root, signature and growth, and that the log extends a head kept elsewhere.

Coverage is decided by the tree: a committed row after the log began that is neither a
leaf nor waiting in the seal queue is a finding, whatever its `received_at` says.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.integrity import merkle, note
from service.integrity.leaf import action_leaf, as_json
from service.integrity.verify import GRACE_S
from service.store.db import Conn
from service.store.verify_reads import (
    BATCHES,
    ERASURES,
    LOG_CHECKPOINTS,
    LOGGED_SEQS,
    PENDING,
    RETAINED,
    RETENTION_ACTIONS,
    ROW_ID,
    STALE,
    UNLOGGED,
    erasure_rows,
    export_snapshot,
    int8_ranges,
)

HB = merkle.HASH_BYTES


@dataclass
class LogReport:
    """What the log verification found."""

    leaves: int = 0
    rows: int = 0
    checkpoints: int = 0
    findings: int = 0
    removed_by_retention: int = 0
    erased: int = 0
    awaiting_seal: int = 0
    rows_beyond: int = 0  # rows of seq > `v1_until` (the ones the v1 pass left to the log)
    lines: list[str] = field(default_factory=list)


@dataclass
class _Ctx:
    conn: Conn
    key: Ed25519PublicKey
    emit: Callable[[str], None]
    report: LogReport
    row_leaf_of: Callable[[Any], bytes]
    rows_query: str
    actions_query: str
    v1_until: int
    retained: list[tuple[int, int, int]] = field(default_factory=list)
    erased: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)

    def finding(self, line: str) -> None:
        self.report.findings += 1
        self.emit(line)

    def erased_indexes(self, start: int, end: int) -> list[int]:
        return [i for i in self.erased if start <= i < end]


async def verify_log(
    conn: Conn,
    key: Ed25519PublicKey,
    *,
    row_leaf_of: Callable[[Any], bytes],
    rows_query: str,
    actions_query: str,
    head: note.Checkpoint | None = None,
    emit: Callable[[str], None] = print,
    seal_interval_s: float = 10.0,
    v1_until: int = -1,
    rows_check: RowsCheck | None = None,
) -> LogReport:
    """Check the log of `conn` (inside the caller's snapshot); each finding goes to `emit`.

    Rows queued for sealing are awaiting their seal whatever their age (those of seq >
    `v1_until` are counted: the v1 pass counts the others); queued longer than the seal
    interval + grace, they are a finding: the sealer is not sealing. `rows_check` checks the
    rows elsewhere (processes of their own, in this snapshot); without it, here."""
    ctx = _Ctx(conn, key, emit, LogReport(), row_leaf_of, rows_query, actions_query, v1_until)
    ctx.retained = [
        (r["id"], lo, hi)
        for r in await conn.fetch(RETAINED, list(RETENTION_ACTIONS))
        for lo, hi in int8_ranges(r["seqs"])
    ]
    ctx.erased = await _erasures(conn)
    hashes: list[bytes] = []
    first_seq: int | None = None
    batches: list[_Batch] = []
    for record in await conn.fetch(BATCHES):
        if record["first"] != len(hashes):
            ctx.finding(f"log leaves {len(hashes)}-{record['first'] - 1} missing")
            break
        batch = _Batch(
            record["first"],
            bytes(record["hashes"]),
            record["row_seqs"],
            int8_ranges(record["row_seqs"]),
            int8_ranges(record["action_ids"]),
        )
        rows = sum(hi - lo for lo, hi in batch.seqs)
        if rows + sum(hi - lo for lo, hi in batch.ids) != len(batch.hashes) // HB:
            ctx.finding(f"log batch at leaf {batch.first} altered: its ranges and hashes differ")
        else:
            batches.append(batch)
        if first_seq is None and batch.seqs:
            first_seq = batch.seqs[0][0]
        hashes.extend(batch.hashes[i : i + HB] for i in range(0, len(batch.hashes), HB))
    jobs = [(b.first, b.row_seqs, b.hashes[: b.rows * HB]) for b in batches]
    # The roots of every checkpoint's size, built in a thread while the rows are checked
    # (this process only waits for them then).
    checkpoints = await conn.fetch(LOG_CHECKPOINTS)
    sizes = {int(r["size"]) for r in checkpoints} | ({head.size} if head else set())
    roots = asyncio.create_task(asyncio.to_thread(prefix_roots, hashes, sizes))
    pending = await conn.fetchval(PENDING)
    logged = await conn.fetchval(LOGGED_SEQS)
    if rows_check is not None and jobs:
        snapshot = await export_snapshot(conn)
        # This connection is idle while others check the rows: the scan for rows neither
        # logged nor queued (every row after the log began) runs meanwhile.
        results, unlogged = await asyncio.gather(
            rows_check(snapshot, jobs), _unlogged(conn, first_seq, logged, pending)
        )
    else:
        results = []
        for first, row_seqs, stored in jobs:
            found = await conn.fetch(rows_query, row_seqs)
            results.append((first, *compare_rows(row_seqs, found, stored, row_leaf_of)))
        unlogged = await _unlogged(conn, first_seq, logged, pending)
    by_first = {first: (found, mismatches) for first, found, mismatches in results}
    for batch in batches:
        await _rows(ctx, batch, *by_first[batch.first])
        await _actions(ctx, batch)
    ctx.report.leaves = len(hashes)
    _checkpoints(ctx, checkpoints, len(hashes), await roots, head)
    for r in unlogged:
        ctx.finding(f"row {r['id']} not in the log (not queued for sealing either)")
    ctx.report.awaiting_seal = sum(
        hi - max(lo, v1_until + 1) for lo, hi in int8_ranges(pending) if hi > v1_until + 1
    )
    for r in await conn.fetch(STALE, seal_interval_s + GRACE_S):
        what = "rows" if r["kind"] == "row" else "store actions"
        ctx.finding(
            f"{r['n']} {what} queued for sealing since {r['since'].astimezone(UTC).isoformat()}, "
            f"longer than the seal interval + {GRACE_S:.0f} s: the sealer is not sealing"
        )
    return ctx.report


async def _unlogged(
    conn: Conn, first_seq: int | None, logged: str, pending: str
) -> list[asyncpg.Record]:
    """Rows after the log began that are neither leaves nor queued for sealing."""
    if first_seq is None:
        return []
    records: list[asyncpg.Record] = await conn.fetch(UNLOGGED, first_seq, logged, pending)
    return records


@dataclass
class _Batch:
    first: int
    hashes: bytes
    row_seqs: str
    seqs: list[tuple[int, int]]
    ids: list[tuple[int, int]]

    @property
    def rows(self) -> int:
        return sum(hi - lo for lo, hi in self.seqs)


# A row whose leaf is not the stored one: (offset in its batch, seq, the row's id, or None
# when no row has that seq, its leaf hash or None).
Mismatch = tuple[int, int, str | None, bytes | None]
# Checks the rows of batches (first leaf, row seqs, their stored leaf hashes), in the
# snapshot given: per batch, (first leaf, rows found, mismatches).
RowsCheck = Callable[
    [str, list[tuple[int, str, bytes]]], Awaitable[list[tuple[int, int, list[Mismatch]]]]
]


def compare_rows(
    row_seqs: str,
    rows: Sequence[Any],
    stored: bytes,
    row_leaf_of: Callable[[Any], bytes],
) -> tuple[int, list[Mismatch]]:
    """Rows (in seq order: seq first, id second) against their batch's stored leaf hashes:
    the rows found and the mismatches. The usual case, every row intact, is one comparison."""
    sha256 = hashlib.sha256
    computed = [sha256(b"\x00" + row_leaf_of(r)).digest() for r in rows]
    return compare_hashes(
        row_seqs, computed, stored, lambda at: int(rows[at][0]), lambda at: str(rows[at][1])
    )


def compare_hashes(
    row_seqs: str,
    computed: Sequence[bytes],
    stored: bytes,
    seq_of: Callable[[int], int],
    id_of: Callable[[int], str],
) -> tuple[int, list[Mismatch]]:
    """The leaf hashes of the rows found (in seq order; `seq_of` and `id_of` tell a found
    row's seq and id by its position) against their batch's stored ones: the rows found and
    the mismatches."""
    seqs = [s for lo, hi in int8_ranges(row_seqs) for s in range(lo, hi)]
    if len(computed) == len(seqs) and b"".join(computed) == stored:
        return len(computed), []
    mismatches: list[Mismatch] = []
    at = 0
    for offset, seq in enumerate(seqs):
        if at < len(computed) and seq_of(at) == seq:
            leaf = computed[at]
            if leaf != stored[offset * HB : (offset + 1) * HB]:
                mismatches.append((offset, seq, id_of(at), leaf))
            at += 1
        else:
            mismatches.append((offset, seq, None, None))
    return len(computed), mismatches


async def _rows(ctx: _Ctx, batch: _Batch, found: int, mismatches: list[Mismatch]) -> None:
    """Account for a batch's rows: those found, missing, altered or erased."""
    ctx.report.rows += found
    ctx.report.rows_beyond += sum(
        hi - max(lo, ctx.v1_until + 1) for lo, hi in batch.seqs if hi > ctx.v1_until + 1
    )
    seen: set[int] = set()
    for offset, seq, row_id, leaf in mismatches:
        index = batch.first + offset
        seen.add(index)
        stored = batch.hashes[offset * HB : (offset + 1) * HB]
        if row_id is None or leaf is None:
            if seq > ctx.v1_until:
                ctx.report.rows_beyond -= 1
            action = next((a for a, lo, hi in ctx.retained if lo <= seq < hi), None)
            if action is None:
                ctx.finding(f"row with seq {seq} missing (leaf {index})")
            else:
                ctx.report.removed_by_retention += 1
            continue
        _erased_or_altered(ctx, row_id, index, stored, leaf)
    # Erased rows whose leaf is still the stored one: the erasure was undone.
    end = batch.first + batch.rows
    for index in ctx.erased_indexes(batch.first, end):
        if index not in seen:
            offset = index - batch.first
            stored = batch.hashes[offset * HB : (offset + 1) * HB]
            seq = _seq_at(batch.seqs, offset)
            row_id = await ctx.conn.fetchval(ROW_ID, seq)
            if row_id is not None:
                _erased_or_altered(ctx, str(row_id), index, stored, stored)


def _seq_at(ranges: list[tuple[int, int]], offset: int) -> int:
    for lo, hi in ranges:
        if offset < hi - lo:
            return lo + offset
        offset -= hi - lo
    raise IndexError(offset)


def _erased_or_altered(ctx: _Ctx, row_id: str, index: int, stored: bytes, leaf: bytes) -> None:
    chain = ctx.erased.get(index)
    if chain:
        if chain[0][0] != stored or chain[-1][1] != leaf:
            ctx.finding(f"row {row_id} altered (leaf {index}) after its erasure")
        else:
            ctx.report.erased += 1
    else:
        ctx.finding(f"row {row_id} altered (leaf {index})")


async def _actions(ctx: _Ctx, batch: _Batch) -> None:
    """Check a batch's action leaves against the store actions they stand for."""
    if not batch.ids:
        return
    conn = ctx.conn
    ids = [i for lo, hi in batch.ids for i in range(lo, hi)]
    records = await conn.fetch(ctx.actions_query, "{" + ",".join(
        f"[{lo},{hi})" for lo, hi in batch.ids) + "}")  # fmt: skip
    actions = {a["id"]: a for a in records}
    for offset, action_id in enumerate(ids, start=batch.rows):
        index = batch.first + offset
        stored = batch.hashes[offset * HB : (offset + 1) * HB]
        a = actions.get(action_id)
        if a is None:
            ctx.finding(f"action {action_id} missing (leaf {index})")
            continue
        data = action_leaf(action_json(a, await erasure_rows(conn, index)))
        if merkle.leaf_hash(data) != stored:
            ctx.finding(f"action {action_id} ({a['action']}) altered (leaf {index})")


def prefix_roots(hashes: list[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The roots of the first n leaves for each n in `sizes` (n at most the leaves'): the
    tree's complete nodes built level by level, each level in one comprehension (a third
    less CPU than a stack walked leaf by leaf: this runs beside the rows' check, on the
    same cores; a level's odd last node has no parent yet), then each root from the
    aligned subtrees that cover its prefix. Holds about as many nodes again as leaves."""
    sha256 = hashlib.sha256
    levels = [hashes]
    while len(levels[-1]) > 1:
        below = iter(levels[-1])
        levels.append(
            [
                sha256(b"\x01" + left + right).digest()
                for left, right in zip(below, below, strict=False)
            ]
        )
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
    for n in sizes:
        if 0 < n <= len(hashes):
            roots[n] = merkle.fold([levels[h][i] for h, i in merkle.decompose(0, n)])
    return roots


def _checkpoints(
    ctx: _Ctx,
    records: Sequence[asyncpg.Record],
    leaves: int,
    roots: dict[int, bytes],
    head: note.Checkpoint | None,
) -> None:
    """Each checkpoint: signed by the key, of one origin, growing, with the root of the
    log's first `size` leaves (so each extends the one before: they are prefixes of one
    list of leaves). `roots`: the root of the first n leaves for each checkpoint's size."""
    parsed: list[tuple[int, note.Checkpoint]] = []
    for record in records:
        ctx.report.checkpoints += 1
        size = int(record["size"])
        try:
            checkpoint = note.parse(record["note"])
            note.verify(checkpoint, checkpoint.origin, ctx.key)
        except note.NoteError as exc:
            ctx.finding(f"checkpoint of size {size} altered or signed with another key: {exc}")
            continue
        if checkpoint.size != size:
            ctx.finding(f"checkpoint of size {size} altered: its note says {checkpoint.size}")
            continue
        parsed.append((size, checkpoint))
    origin: str | None = None
    for size, checkpoint in parsed:
        if origin is not None and checkpoint.origin != origin:
            ctx.finding(f"checkpoint of size {size} is of another log ({checkpoint.origin})")
        origin = checkpoint.origin
        if size > leaves:
            ctx.finding(f"checkpoint of size {size} covers leaves the log no longer has")
        elif roots[size] != checkpoint.root:
            ctx.finding(
                f"checkpoint of size {size}: the log's first {size} leaves no longer have its "
                "root (the log was rewritten, or the checkpoint forged)"
            )
    if head is not None:
        _check_head(ctx, leaves, roots, head)


def _check_head(ctx: _Ctx, leaves: int, roots: dict[int, bytes], head: note.Checkpoint) -> None:
    """The head kept elsewhere must be a prefix of the log as stored."""
    label = f"the head given ({head.origin}, size {head.size})"
    try:
        note.verify(head, head.origin, ctx.key)
    except note.NoteError as exc:
        ctx.finding(f"{label} is not signed by this key: {exc}")
        return
    if head.size > leaves:
        ctx.finding(
            f"the log does not extend {label}: it has {leaves} leaves "
            "(a cut tail or a restored older backup)"
        )
    elif roots[head.size] != head.root:
        ctx.finding(f"the log does not extend {label}: its first {head.size} leaves differ")


async def _erasures(conn: Conn) -> dict[int, list[tuple[bytes, bytes]]]:
    """Per row leaf index: (before, after) of each erasure, in the order they were logged."""
    chains: dict[int, list[tuple[bytes, bytes]]] = {}
    for r in await conn.fetch(ERASURES):
        chains.setdefault(r["leaf_index"], []).append((bytes(r["before"]), bytes(r["after"])))
    return chains


def action_json(
    action: Mapping[str, Any] | asyncpg.Record, rows: Sequence[Mapping[str, Any] | asyncpg.Record]
) -> dict[str, Any]:
    """An action's leaf fields as JSON (docs/integrity.md, "Leaves")."""
    fields: dict[str, Any] = as_json(
        {k: action[k] for k in ("id", "at", "action", "actor", "detail")}
    )
    if rows:
        fields["rows"] = [
            {
                "leaf_index": int(r["leaf_index"]),
                "before": base64.b64encode(bytes(r["before"])).decode(),
                "after": base64.b64encode(bytes(r["after"])).decode(),
            }
            for r in rows
        ]
    return fields
