"""A piece of the log's rows checked from a binary COPY, each row's leaf written in C.

The checker of `auditq verify` (service/store/logcheck.py) rebuilds every row's leaf from its
columns. asyncpg decoding 28 columns into Python objects and msgspec writing them again cost
most of its CPU; here PostgreSQL sends the columns in their binary form (`COPY … (FORMAT
binary)`: the times as integers, no text to format), and service/store/_copyleaf.c writes
each row's canonical JSON and its leaf hash straight from those bytes.

The C writes only what it is sure of; every row it marks unsure, and every row whose hash
differs from the stored one, is read again (same snapshot) and decided by the Python path
(service/store/leaves.py), so a finding is always the Python path's. Without the compiled
module (an install with no compiler) every piece takes the Python path.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from types import ModuleType

import asyncpg

from service.integrity.canonical import ROW_COLUMNS
from service.integrity.logverify import Mismatch, compare_hashes, compare_rows
from service.integrity.merkle import leaf_hash
from service.store.db import Conn
from service.store.leaves import LEAF_ROWS, row_leaf_data, rows_by_seq_ranges
from service.store.verify_reads import ROWS_TEXT_TIMES, int8_ranges

_copyleaf: ModuleType | None
try:
    _copyleaf = importlib.import_module("service.store._copyleaf")
except ImportError:  # built without a compiler: the Python path
    _copyleaf = None

HB = 32
# The columns the C reads, in its order (service/store/_copyleaf.c, `enum`: the canonical
# record's), each cast to the type the C reads its binary form as: a column whose type an
# owner changed still reaches the C as that type, so its bytes are never read as another's
# (a cast of a column to its own type costs nothing).
_TYPES = {
    "seq": "int8", "id": "uuid", "ts": "timestamptz", "received_at": "timestamptz",
    "ip": "inet", "status": "int4", "duration_ms": "float8",
    "changes": "jsonb", "metadata": "jsonb", "presentation": "jsonb",
}  # fmt: skip
COPY_COLUMNS = ", ".join(f"{c}::{_TYPES.get(c, 'text')}" for c in ROW_COLUMNS)
_RANGES = re.compile(r"^\{(\[\d+,\d+\)(,\[\d+,\d+\))*)?\}$")
_HEADER = b"PGCOPY\n\xff\r\n\x00"


def available() -> bool:
    """Whether the compiled module is here (else every piece takes the Python path)."""
    return _copyleaf is not None


def leaf_data(copy_tuple: bytes) -> bytes | None:
    """The C's leaf data of one binary COPY tuple, None where it is unsure (for tests)."""
    assert _copyleaf is not None
    data: bytes | None = _copyleaf.leaf_data(copy_tuple)
    return data


def copy_query(row_seqs: str) -> str:
    """The SELECT whose binary COPY the C reads: the rows of `row_seqs`, unsorted (a COPY
    takes no parameters: the ranges, checked to be nothing but ranges, are a literal).
    Sorting is left to hash_rows: PostgreSQL would sort the wide rows, on disk past
    work_mem (a seal of 9,000 rows did), where the reader sorts seqs and 32-byte hashes."""
    if not _RANGES.match(row_seqs):
        raise ValueError(f"not a multirange of seqs: {row_seqs[:80]!r}")
    return rows_by_seq_ranges(COPY_COLUMNS, f"'{row_seqs}'", ordered=False)


async def hash_rows(conn: Conn, row_seqs: str) -> tuple[list[int], bytes, list[int]]:
    """The rows of `row_seqs` read by a binary COPY, in seq order: their seqs, their leaf
    hashes as the C writes them (32 bytes each), and the positions of the rows it was
    unsure of."""
    reader = Reader()
    await conn.copy_from_query(
        copy_query(row_seqs), output=reader.take, format="binary", timeout=None
    )
    if not reader.finished or reader.rest:
        raise ValueError("a binary COPY cut short")
    seqs, hashes, unsure = reader.seqs, b"".join(reader.hashes), reader.unsure
    if seqs != sorted(seqs):  # rows of several partitions (stable: equal seqs keep their order)
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        now_at = {was: at for at, was in enumerate(order)}
        seqs = [seqs[i] for i in order]
        hashes = b"".join(hashes[i * HB : (i + 1) * HB] for i in order)
        unsure = sorted(now_at[i] for i in unsure)
    return seqs, hashes, unsure


async def leaf_hashes(conn: Conn, row_seqs: str) -> tuple[list[int], list[bytes]]:
    """The sealer's leaves: the seqs of the rows of `row_seqs`, in seq order, and their leaf
    hashes. The C writes those it is sure of, the Python path the others (a row is read
    again for it in the caller's transaction); without the module, or when the ranges are
    not the plain ones the COPY takes, or when rows share a seq, every row is the Python
    path's. The two write the same bytes (tests/integrity/test_copyleaf*.py check it
    against RFC 8785's reference on random rows), so a leaf does not depend on which wrote it."""
    if _copyleaf is None or not _RANGES.match(row_seqs):
        return await _python_leaf_hashes(conn, row_seqs)
    seqs, blob, unsure = await hash_rows(conn, row_seqs)
    if not unsure:
        return seqs, [blob[i : i + HB] for i in range(0, len(blob), HB)]
    if len(set(seqs)) != len(seqs):  # which re-read row is which: only their order tells
        return await _python_leaf_hashes(conn, row_seqs)
    hashes = [blob[i : i + HB] for i in range(0, len(blob), HB)]
    again = "{" + ",".join(f"[{seqs[i]},{seqs[i] + 1})" for i in unsure) + "}"
    by_seq = {r[0]: r for r in await conn.fetch(LEAF_ROWS, again, timeout=None)}
    for i in unsure:
        row = by_seq.get(seqs[i])
        if row is None:  # gone between the two reads: only a change of the past does that
            raise RuntimeError(f"row of seq {seqs[i]} vanished while it was being sealed")
        hashes[i] = leaf_hash(row_leaf_data(row))
    return seqs, hashes


async def _python_leaf_hashes(conn: Conn, row_seqs: str) -> tuple[list[int], list[bytes]]:
    rows = await conn.fetch(LEAF_ROWS, row_seqs, timeout=None)
    return [r[0] for r in rows], [leaf_hash(row_leaf_data(r)) for r in rows]


class Reader:
    """The COPY's data as it comes (chunks cut anywhere): its header, then its tuples."""

    def __init__(self) -> None:
        assert _copyleaf is not None
        self.hash_rows = _copyleaf.hash_rows
        self.seqs: list[int] = []
        self.hashes: list[bytes] = []
        self.unsure: list[int] = []
        self.rest = b""
        self.started = self.finished = False

    async def take(self, chunk: bytes | bytearray | memoryview) -> None:
        self.feed(chunk)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        data = self.rest + chunk if self.rest else bytes(chunk)
        at = 0
        if not self.started:
            # Signature (11 bytes), flags (4), the header extension's length (4), extension.
            at = 19 + int.from_bytes(data[15:19], "big") if len(data) >= 19 else 19
            if len(data) < at:
                self.rest = data
                return
            if data[:11] != _HEADER:
                raise ValueError("not a binary COPY")
            self.started = True
        at, seqs, hashes, unsure, finished = self.hash_rows(data, at)
        self.unsure.extend(len(self.seqs) + i for i in unsure)
        self.seqs.extend(seqs)
        self.hashes.append(hashes)
        self.rest = data[at:]
        self.finished = self.finished or finished


async def check_piece(
    conn: asyncpg.Connection, row_seqs: str, stored: bytes
) -> tuple[int, list[Mismatch]]:
    """The rows of `row_seqs` against their stored leaf hashes: the rows found and the
    mismatches (logverify.compare_rows's answer, by the C where it is sure)."""
    if _copyleaf is None:
        rows = await conn.fetch(ROWS_TEXT_TIMES, row_seqs, timeout=None)
        return compare_rows(row_seqs, rows, stored, row_leaf_data)
    seqs, hashes, unsure = await hash_rows(conn, row_seqs)
    expected = sum(hi - lo for lo, hi in int8_ranges(row_seqs))
    if not unsure and len(seqs) == expected and hashes == stored:
        return len(seqs), []  # the usual case: every row intact
    if len(set(seqs)) != len(seqs):  # rows sharing a seq: the Python path walks them all
        rows = await conn.fetch(ROWS_TEXT_TIMES, row_seqs, timeout=None)
        return compare_rows(row_seqs, rows, stored, row_leaf_data)
    offset_of = {
        s: i for i, s in enumerate(s for lo, hi in int8_ranges(row_seqs) for s in range(lo, hi))
    }
    computed = [hashes[i * HB : (i + 1) * HB] for i in range(len(seqs))]
    doubtful = set(unsure)
    for i, seq in enumerate(seqs):
        at = offset_of.get(seq)
        if at is None or computed[i] != stored[at * HB : (at + 1) * HB]:
            doubtful.add(i)
    ids: dict[int, str] = {}
    if doubtful:
        again = sorted(seqs[i] for i in doubtful)
        ranges = "{" + ",".join(f"[{s},{s + 1})" for s in again) + "}"
        by_seq = {r[0]: r for r in await conn.fetch(ROWS_TEXT_TIMES, ranges, timeout=None)}
        for i in doubtful:
            row = by_seq.get(seqs[i])
            if row is None:
                raise RuntimeError(f"row of seq {seqs[i]} not read again in the same snapshot")
            computed[i] = hashlib.sha256(b"\x00" + row_leaf_data(row)).digest()
            ids[i] = str(row[1])
    return compare_hashes(row_seqs, computed, stored, seqs.__getitem__, ids.__getitem__)
