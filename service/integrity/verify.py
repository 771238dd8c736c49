"""Verify the store against its checkpoints: the chain, the signatures, every row and action.

One REPEATABLE READ transaction (a consistent picture while rows keep arriving), rows read
through a server-side cursor in `seq` order and merged with the checkpoints' entries, which
are read one checkpoint at a time: memory holds the checkpoints' metadata and the entries
of the checkpoints whose seq spans overlap the current row, never the rows.
docs/integrity.md, "auditq verify", is the specification.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.integrity.canonical import (
    ENTRY_BYTES,
    CopyRecords,
    action_entry,
    iter_entries,
    row_entry,
)
from service.integrity.checkpoint import GENESIS_HASH, body_of, checkpoint_hash
from service.integrity.keys import key_id, signature_valid
from service.store.verify_reads import (
    ACTIONS,
    ACTIONS_IN_LOG,
    ACTIONS_QUEUED,
    CHECKPOINT_ROWS,
    CHECKPOINTS,
    IN_LOG,
    LOG_START,
    OTHER_ACTION_ENTRIES,
    QUEUED,
    REPLACEMENTS,
    RETENTION_ACTIONS,
    ROWS,
    ROWS_COPY,
    STORED_HASH,
    export_snapshot,
    int8_ranges,
    set_snapshot,
)

logger = logging.getLogger(__name__)

GRACE_S = 30.0  # on top of the seal interval before an unsealed row is a finding
ROW_PREFETCH = 10_000  # rows per FETCH of the cursor
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class Report(msgspec.Struct, kw_only=True):
    """What a verification found (the summary line, in numbers)."""

    rows: int = 0
    checkpoints: int = 0
    actions: int = 0
    findings: int = 0
    removed_by_retention: int = 0
    anonymised: int = 0
    awaiting_seal: int = 0
    # The last seq this pass checked for coverage (None: every row); later rows are the log's.
    rows_until: int | None = None

    @property
    def intact(self) -> bool:
        return self.findings == 0

    def summary(self) -> str:
        return (
            f"verified: {self.rows} rows, {self.checkpoints} checkpoints, {self.actions} actions, "
            f"{self.findings} findings ({self.removed_by_retention} removed by retention, "
            f"{self.anonymised} changed by anonymisation, {self.awaiting_seal} awaiting seal)"
        )


@dataclasses.dataclass
class _Meta:
    n: int
    seq_min: int | None
    seq_max: int | None
    row_count: int
    rows_hash: bytes


def _row_id(entry: bytes | memoryview) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(entry[8:24]))


def _stored_at(record: memoryview) -> datetime:
    """received_at of a row record (its 4th column, int64 µs since 2000-01-01)."""
    return _PG_EPOCH + timedelta(microseconds=int.from_bytes(record[68:76], "big", signed=True))


def _range_index(text: str | None) -> tuple[list[int], list[int]]:
    """Sorted, disjoint int8 ranges (a multirange's text) as their starts and ends."""
    pairs = int8_ranges(text)
    return [lo for lo, _ in pairs], [hi for _, hi in pairs]


def _within(index: tuple[list[int], list[int]], seq: int) -> bool:
    starts, ends = index
    at = bisect.bisect(starts, seq) - 1
    return at >= 0 and seq < ends[at]


class _Verifier:
    def __init__(
        self,
        conn: asyncpg.Connection,
        key: Ed25519PublicKey,
        *,
        since: datetime | None,
        until: datetime | None,
        seal_interval_s: float,
        emit: Callable[[str], None],
    ) -> None:
        self.conn = conn
        self.rows_conn: asyncpg.Connection | None = None
        self.key = key
        self.key_id = key_id(key)
        self.since, self.until = since, until
        self.emit_line = emit
        self.report = Report()
        self.old_before = datetime.now(UTC) - timedelta(seconds=seal_interval_s + GRACE_S)
        self.metas: list[_Meta] = []
        self.action_entries: dict[int, tuple[bytes, int]] = {}
        self.sealed_actions: set[int] = set()
        self.action_at: dict[int, datetime] = {}
        self.anonymised_by_action: dict[int, int] = {}
        self.retention_starts: list[int] = []
        self.retention_ends: list[int] = []
        # The row merge: checkpoints by where their seq span starts, the next one to read,
        # a heap of (next entry, checkpoint, rest of its entries), the last entry matched.
        self.pending_metas: list[_Meta] = []
        self.next_meta = 0
        self.heap: list[tuple[bytes, int, Iterator[bytes]]] = []
        self.last_match: tuple[bytes, int, Iterator[bytes]] | None = None
        self.replacements: dict[int, list[tuple[int, bytes, bytes]]] = {}
        # Seq ranges (sorted) in the transparency log, and queued for sealing.
        self.in_log: tuple[list[int], list[int]] = ([], [])
        self.queued: tuple[list[int], list[int]] = ([], [])
        self.actions_in_log: tuple[list[int], list[int]] = ([], [])
        self.actions_queued: tuple[list[int], list[int]] = ([], [])

    def finding(self, line: str) -> None:
        self.report.findings += 1
        self.emit_line(line)

    async def run(self) -> Report:
        await self._checkpoints()
        await self._actions()
        await self._rows()
        # A count per erasure action, not a line per row: an erasure changes thousands.
        for action, count in sorted(self.anonymised_by_action.items()):
            rows = "1 row" if count == 1 else f"{count} rows"
            self.emit_line(f"{rows} changed by anonymisation (action {action})")
        return self.report

    async def _checkpoints(self) -> None:
        previous: tuple[int, bytes] | None = None
        async for c in self.conn.cursor(CHECKPOINTS, self.since, self.until, prefetch=100):
            self.report.checkpoints += 1
            n: int = c["n"]
            if previous is None or previous[0] != n - 1:
                expected = await self._predecessor_hash(n, previous)
            else:
                expected = previous[1]
            signed = body_of(
                n=n,
                sealed_at=c["sealed_at"],
                prev_hash=bytes(c["prev_hash"]),
                row_count=c["row_count"],
                rows_hash=bytes(c["rows_hash"]),
                action_count=c["action_count"],
                actions_hash=hashlib.sha256(c["actions"]).digest(),
                key_id=bytes(c["key_id"]),
            )
            if expected is not None and bytes(c["prev_hash"]) != expected:
                self.finding(f"checkpoint {n} altered: it does not chain to checkpoint {n - 1}")
            if bytes(c["key_id"]) != self.key_id:
                self.finding(f"checkpoint {n} signed with another key ({c['key_id'].hex()})")
            elif not signature_valid(self.key, bytes(c["signature"]), signed):
                self.finding(f"checkpoint {n} altered: its signature does not verify")
            sizes_ok = (
                c["rows_bytes"] == c["row_count"] * ENTRY_BYTES
                and len(c["actions"]) == c["action_count"] * ENTRY_BYTES
            )
            if not sizes_ok:
                self.finding(f"checkpoint {n} altered: its entries do not match its counts")
            previous = (n, checkpoint_hash(signed))
            for entry in iter_entries(bytes(c["actions"])):
                self.action_entries[int.from_bytes(entry[:8], "big")] = (entry, n)
            if c["row_count"] and c["seq_min"] is not None:
                self.metas.append(
                    _Meta(n, c["seq_min"], c["seq_max"], c["row_count"], bytes(c["rows_hash"]))
                )
        seen = [m.n for m in self.metas]
        for n, blob in await self.conn.fetch(OTHER_ACTION_ENTRIES, seen or [0]):
            for entry in iter_entries(bytes(blob)):
                self.action_entries.setdefault(int.from_bytes(entry[:8], "big"), (entry, n))

    async def _predecessor_hash(self, n: int, previous: tuple[int, bytes] | None) -> bytes | None:
        """The hash checkpoint n must chain to, when its predecessor was not read just before."""
        if n == 1:
            return GENESIS_HASH
        if self.since is None and self.until is None:
            # Every checkpoint is read: the ones between are gone.
            first = previous[0] + 1 if previous is not None else 1
            label = f"{first}" if first == n - 1 else f"{first}-{n - 1}"
            self.finding(f"checkpoint {label} removed")
            return None
        stored = await self.conn.fetchval(STORED_HASH, n - 1)
        if stored is None:
            self.finding(f"checkpoint {n - 1} removed")
            return None
        return bytes(stored)

    async def _actions(self) -> None:
        self.actions_in_log = _range_index(await self.conn.fetchval(ACTIONS_IN_LOG))
        self.actions_queued = _range_index(await self.conn.fetchval(ACTIONS_QUEUED))
        async for a in self.conn.cursor(ACTIONS, prefetch=1000):
            self.report.actions += 1
            action_id: int = a["id"]
            entry = action_entry(bytes(a["rec"]))
            self.action_at[action_id] = a["at"]
            sealed = self.action_entries.pop(action_id, None)
            if sealed is None:
                if _within(self.actions_in_log, action_id):  # the log's: checked there
                    continue
                if _within(self.actions_queued, action_id):
                    self.report.awaiting_seal += 1
                    continue
                if a["at"] < self.old_before and self._in_window(a["at"]):
                    self.finding(
                        f"action {action_id} ({a['action']}) not covered by any checkpoint"
                    )
                else:
                    self.report.awaiting_seal += 1
                continue
            if sealed[0] != entry:
                self.finding(f"action {action_id} ({a['action']}) altered (checkpoint {sealed[1]})")
                continue
            self.sealed_actions.add(action_id)
            if a["action"] in RETENTION_ACTIONS and a["seqs"]:
                self._retained(action_id, a["at"], a["detail"], a["seqs"])
        for action_id, (_entry, n) in sorted(self.action_entries.items()):
            self.finding(f"action {action_id} missing (checkpoint {n})")

    def _retained(self, action_id: int, at: datetime, detail: object, seqs: str) -> None:
        info = detail if isinstance(detail, dict) else msgspec.json.decode(str(detail))
        sealed = "sealed" if info.get("sealed") else "not all sealed"
        what = (
            f"partition {info.get('partition')}"
            if "before" not in info
            else f"rows of {info.get('partition')} before {info.get('before')}"
        )
        self.emit_line(
            f"{what} removed by retention at "
            f"{at.astimezone(UTC).isoformat()}: {info.get('rows')} rows, {sealed}, "
            f"final digest {info.get('digest')} (action {action_id})"
        )
        for lo, hi in int8_ranges(seqs):
            index = bisect.bisect(self.retention_starts, int(lo))
            self.retention_starts.insert(index, int(lo))
            self.retention_ends.insert(index, int(hi))

    def _in_window(self, when: datetime) -> bool:
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )

    def _retention_removed(self, seq: int) -> bool:
        index = bisect.bisect(self.retention_starts, seq) - 1
        return index >= 0 and seq < self.retention_ends[index]

    async def _rows(self) -> None:
        self.pending_metas = sorted(self.metas, key=lambda m: m.seq_min or 0)
        lo = min((m.seq_min for m in self.metas if m.seq_min is not None), default=None)
        hi = max((m.seq_max for m in self.metas if m.seq_max is not None), default=None)
        row_lo = lo if self.since is not None else None
        row_hi = hi if self.until is not None else None
        if self.until is not None and not self.metas:
            return
        log_start = await self.conn.fetchval(LOG_START)
        if log_start is not None and self.until is None:
            row_hi = max(hi or 0, log_start - 1)
            self.report.rows_until = row_hi
        self.in_log = _range_index(await self.conn.fetchval(IN_LOG))
        self.queued = _range_index(await self.conn.fetchval(QUEUED))
        self.replacements = await self._replacements(row_lo, row_hi)
        if self.rows_conn is not None:
            await self._stream_rows(self.rows_conn, row_lo, row_hi)
        else:
            cursor = self.conn.cursor(ROWS, row_lo, row_hi, prefetch=ROW_PREFETCH)
            async for (record,) in cursor:
                self.report.rows += 1
                view = memoryview(record)
                entry = row_entry(view)
                if not self._matched(entry):
                    await self._row(view, entry)
        await self._load_until(hi if hi is not None else 0)
        while self.heap:
            self._missing(*self.heap[0][:2])
            self._advance()

    async def _stream_rows(
        self, rows_conn: asyncpg.Connection, lo: int | None, hi: int | None
    ) -> None:
        """Read the rows through a binary COPY on a second connection, same snapshot."""
        snapshot = await export_snapshot(self.conn)
        records = CopyRecords()

        async def take(chunk: bytes) -> None:
            batch = records.feed(chunk)
            self.report.rows += len(batch)
            matched = self._matched
            for record in batch:
                entry = row_entry(record)
                if not matched(entry):
                    await self._row(record, entry)

        async with rows_conn.transaction(isolation="repeatable_read", readonly=True):
            await set_snapshot(rows_conn, snapshot)
            await rows_conn.copy_from_query(
                ROWS_COPY, lo, hi, output=take, format="binary", timeout=None
            )

    def _matched(self, entry: bytes) -> bool:
        """The usual case, kept cheap: the row is the next entry, intact."""
        heap = self.heap
        if heap and heap[0][0] == entry:
            top = heap[0]
            self.last_match = top
            following = next(top[2], None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following, top[1], top[2]))
            return True
        return False

    async def _row(self, view: memoryview, entry: bytes) -> None:
        """Merge one row (in seq order) that is not simply the next entry."""
        heap = self.heap
        key = entry[:8]
        seq = int.from_bytes(key, "big")
        pending = self.pending_metas
        if self.next_meta < len(pending) and (pending[self.next_meta].seq_min or 0) <= seq:
            await self._load_until(seq)
            if self._matched(entry):
                return
        while heap and heap[0][0][:8] < key:
            self._missing(*heap[0][:2])
            self._advance()
        if heap and heap[0][0][:8] == key:
            top = heap[0]
            expected, n = top[0], top[1]
            self._advance()
            self.last_match = top
            if expected != entry:
                self._changed(entry, expected, n, self.replacements.get(seq))
            return
        if _within(self.in_log, seq):  # the log's: checked there
            return
        if _within(self.queued, seq):  # queued: awaiting its seal, whatever its age
            self.report.awaiting_seal += 1
            return
        stored_at = _stored_at(view)
        if stored_at < self.old_before and self._in_window(stored_at):
            self.finding(f"row {_row_id(entry)} not covered by any checkpoint")
        else:
            self.report.awaiting_seal += 1

    async def _load_until(self, seq: int) -> None:
        """Read the entries of every checkpoint whose span starts at or before `seq`."""
        pending = self.pending_metas
        while self.next_meta < len(pending) and (pending[self.next_meta].seq_min or 0) <= seq:
            meta = pending[self.next_meta]
            self.next_meta += 1
            blob = bytes(await self.conn.fetchval(CHECKPOINT_ROWS, meta.n))
            if hashlib.sha256(blob).digest() != meta.rows_hash:
                self.finding(f"checkpoint {meta.n} altered: its entries changed while read")
            entries = iter_entries(blob)
            first = next(entries, None)
            if first is not None:
                heapq.heappush(self.heap, (first, meta.n, entries))

    def _advance(self) -> None:
        """Move the checkpoint at the top of the heap to its next entry."""
        top = self.heap[0]
        following = next(top[2], None)
        if following is None:
            heapq.heappop(self.heap)
        else:
            heapq.heapreplace(self.heap, (following, top[1], top[2]))

    def _missing(self, entry: bytes, n: int) -> None:
        """An entry no row matched: sealed twice, removed by retention, or missing."""
        seq = int.from_bytes(entry[:8], "big")
        if self.last_match is not None and entry == self.last_match[0]:
            self.finding(
                f"row {_row_id(entry)} sealed twice (checkpoints {self.last_match[1]} and {n})"
            )
        elif self._retention_removed(seq):
            self.report.removed_by_retention += 1
        else:
            self.finding(f"row {_row_id(entry)} missing (checkpoint {n})")

    async def _replacements(
        self, lo: int | None, hi: int | None
    ) -> dict[int, list[tuple[int, bytes, bytes]]]:
        found: dict[int, list[tuple[int, bytes, bytes]]] = {}
        async for r in self.conn.cursor(REPLACEMENTS, lo, hi, prefetch=1000):
            found.setdefault(r["seq"], []).append(
                (r["action_id"], bytes(r["old_digest"]), bytes(r["new_digest"]))
            )
        return found

    def _changed(
        self,
        entry: bytes,
        expected: bytes,
        n: int,
        replaced: list[tuple[int, bytes, bytes]] | None,
    ) -> None:
        """A row whose digest differs from its entry: anonymised, or altered."""
        row = _row_id(entry)
        if replaced is None or entry[:24] != expected[:24]:
            self.finding(f"row {row} altered (checkpoint {n})")
            return
        digest = expected[24:]
        for action_id, old, new in replaced:
            if old != digest:
                self.finding(f"row {row} altered (checkpoint {n}; replacement {action_id})")
                return
            if action_id not in self.sealed_actions:
                at = self.action_at.get(action_id)
                if at is None or at < self.old_before:
                    self.finding(f"row {row} changed by an unsealed action {action_id}")
                    return
            digest = new
        if digest != entry[24:]:
            self.finding(f"row {row} altered (checkpoint {n}) after its anonymisation")
            return
        self.report.anonymised += 1
        action = replaced[-1][0]
        self.anonymised_by_action[action] = self.anonymised_by_action.get(action, 0) + 1


async def verify(
    conn: asyncpg.Connection,
    key: Ed25519PublicKey,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    seal_interval_s: float = 10.0,
    emit: Callable[[str], None] = print,
    rows_conn: asyncpg.Connection | None = None,
) -> Report:
    """Check every checkpoint and every row in the window; each finding goes to `emit`.

    `rows_conn`: a second connection (without a command timeout) to stream the rows on,
    about twice as fast as the cursor on `conn` used without it."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        verifier = _Verifier(
            conn, key, since=since, until=until, seal_interval_s=seal_interval_s, emit=emit
        )
        verifier.rows_conn = rows_conn
        return await verifier.run()
