"""The live stream's entries: which rows one write stored, in a few bytes whatever its size.

The worker appends one entry per write after its commit (service/queue/keys.py live_key); the live
tail (service/api/audit_logs/stream.py) reads those rows back from PostgreSQL. An entry holds
the rows' seqs as ranges (a statement's seqs are contiguous: the sequence hands each session
a thousand at a time) and the span of their ts, which prunes the partitions to read, so Redis
keeps ~60 bytes a write rather than a key per stored event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import msgspec

# Anyone who can write the stream could name every row of the store in one entry: an entry is
# read only when it names finite seq ranges, at most MAX_RANGES of them and MAX_ROWS rows.
MAX_RANGES = 1_000
MAX_ROWS = 1_000_000  # more than a write of AUDITQ_MAX_JOB_BYTES can store
_RANGE = re.compile(r"\[(\d{1,19}),(\d{1,19})\)")
_SEQS = re.compile(r"^\{\[\d{1,19},\d{1,19}\)(?:,\[\d{1,19},\d{1,19}\))*\}$")


class LiveEntry(msgspec.Struct, frozen=True, kw_only=True):
    seqs: str  # an int8multirange literal: "{[1,501),[900,901)}"
    ts_from: datetime
    ts_to: datetime

    @property
    def row_count(self) -> int:
        """How many rows the entry names at most (the seqs its ranges hold)."""
        return sum(int(b) - int(a) for a, b in _RANGE.findall(self.seqs))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LiveEntry)


def live_entry(rows: Sequence[tuple[int, datetime]]) -> dict[str, bytes]:
    """The stream fields for rows (seq, ts) of one write; at least one row."""
    seqs = sorted(seq for seq, _ in rows)
    stamps = [ts for _, ts in rows]
    ranges: list[str] = []
    start = previous = seqs[0]
    for seq in seqs[1:]:
        if seq != previous + 1:
            ranges.append(f"[{start},{previous + 1})")
            start = seq
        previous = seq
    ranges.append(f"[{start},{previous + 1})")
    return live_entry_of_ranges("{" + ",".join(ranges) + "}", min(stamps), max(stamps))


def live_entry_of_ranges(seqs: str, ts_from: datetime, ts_to: datetime) -> dict[str, bytes]:
    """The stream fields for one write's rows given as seq ranges (int8multirange text, as
    PostgreSQL writes one) and the span of their ts."""
    entry = LiveEntry(seqs=seqs, ts_from=ts_from, ts_to=ts_to)
    return {"rows": _encoder.encode(entry)}


def read_live_entry(fields: dict[bytes, bytes]) -> LiveEntry | None:
    """The entry in a stream item's fields; None for an item of another shape."""
    raw = fields.get(b"rows")
    if raw is None:
        return None
    try:
        entry = _decoder.decode(raw)
    except msgspec.DecodeError:  # ValidationError too
        return None
    return entry if _bounded(entry) else None


def _bounded(entry: LiveEntry) -> bool:
    """Tell whether an entry names finite, ordered seq ranges within the bounds."""
    if len(entry.seqs) > MAX_RANGES * 42 or not _SEQS.match(entry.seqs):
        return False
    ranges = [(int(a), int(b)) for a, b in _RANGE.findall(entry.seqs)]
    if len(ranges) > MAX_RANGES or any(a >= b for a, b in ranges):
        return False
    return sum(b - a for a, b in ranges) <= MAX_ROWS and entry.ts_from <= entry.ts_to
