"""The transparency log's tree in PostgreSQL: leaf batches, tiles, checkpoints, proofs.

Leaf hashes are kept per seal batch (`tlog_batch`), and the complete nodes at heights 8, 16,
… in tiles of 256 (`tlog_tile`), so any node is at most 128 hashes away from stored ones and
a proof or a root reads a handful of rows at any tree size (docs/integrity.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from service.integrity import merkle
from service.store.db import Conn

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
HB = merkle.HASH_BYTES

TREE_SIZE = "SELECT coalesce(max(first + size), 0) FROM tlog_batch"
# The leaf hashes of [$1, $2): the batch holding $1 and those after it, up to $2.
LEAVES = """
SELECT first, size,
       substr(hashes, (greatest($1 - first, 0) * 32 + 1)::int,
              ((least($2, first + size) - greatest($1, first)) * 32)::int) AS hashes
FROM tlog_batch
WHERE first < $2
  AND first >= (SELECT coalesce(max(first), 0) FROM tlog_batch WHERE first <= $1)
ORDER BY first
"""
# The widest stored version of each tile asked for.
# Whole tiles of leaves (256 each) from the batches, in one query.
LEAF_TILES = """
SELECT t.idx, b.first,
       substr(b.hashes, (greatest(t.idx * 256 - b.first, 0) * 32 + 1)::int,
              ((least(t.idx * 256 + 256, b.first + b.size)
                - greatest(t.idx * 256, b.first)) * 32)::int) AS hashes
FROM unnest($1::bigint[]) AS t(idx)
JOIN LATERAL (
    SELECT first, size, hashes FROM tlog_batch
    WHERE first < t.idx * 256 + 256
      AND first >= (SELECT coalesce(max(first), 0) FROM tlog_batch WHERE first <= t.idx * 256)
) b ON true
ORDER BY t.idx, b.first
"""
UPPER_TILES = """
SELECT DISTINCT ON (t.level, t.idx) t.level, t.idx, x.hashes
FROM unnest($1::smallint[], $2::bigint[]) AS t(level, idx)
JOIN tlog_tile x ON x.level = t.level AND x.idx = t.idx
ORDER BY t.level, t.idx, x.width DESC
"""
TILES = """
SELECT DISTINCT ON (idx) idx, width, hashes FROM tlog_tile
WHERE level = $1 AND idx = ANY($2::bigint[])
ORDER BY idx, width DESC
"""
INSERT_TILE = "INSERT INTO tlog_tile (level, idx, width, hashes) VALUES ($1, $2, $3, $4)"
INSERT_BATCH = """
INSERT INTO tlog_batch (first, size, row_seqs, action_ids, hashes)
VALUES ($1, $2, $3::text::int8multirange, $4::text::int8multirange, $5)
"""
INSERT_CHECKPOINT = "INSERT INTO tlog_checkpoint (size, note) VALUES ($1, $2)"
LAST_CHECKPOINT = "SELECT size, note, signed_at FROM tlog_checkpoint ORDER BY size DESC LIMIT 1"
CHECKPOINT_AT = "SELECT size, note FROM tlog_checkpoint WHERE size = $1"
COSIGNATURES = "SELECT witness, line FROM tlog_cosignature WHERE size = $1 ORDER BY witness"
INSERT_COSIGNATURE = """
INSERT INTO tlog_cosignature (size, witness, line) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
"""
# Where a row is: its batch, and the seq ranges before it in that batch (rank = leaf offset).
ROW_LEAF = """
SELECT b.first,
       (SELECT coalesce(sum(upper(r * int8range(NULL, $1)) - lower(r * int8range(NULL, $1))), 0)
        FROM unnest(b.row_seqs) r) AS offset
FROM tlog_batch b WHERE b.row_seqs @> $1::int8
"""


class TreeError(Exception):
    """The stored tree lacks what a proof or root needs (it was cut or never written)."""


class Tree:
    """Nodes of the stored tree, fetched ahead in few queries and hashed in memory."""

    def __init__(self, conn: Conn, *, first: int = 0, appended: Sequence[bytes] = ()) -> None:
        """`appended`: leaf hashes from index `first` on that this process just stored, read
        from memory instead of from the store again."""
        self._conn = conn
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._first, self._appended = first, appended

    async def size(self) -> int:
        value: int = await self._conn.fetchval(TREE_SIZE)
        return value

    async def leaves(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes [start, end)."""
        first = self._first
        if self._appended and first < end <= first + len(self._appended):
            before = await self.leaves(start, first) if start < first else []
            return [*before, *self._appended[max(start, first) - first : end - first]]
        out: list[bytes] = []
        for record in await self._conn.fetch(LEAVES, start, end):
            blob = bytes(record["hashes"])
            out.extend(blob[i : i + HB] for i in range(0, len(blob), HB))
        if len(out) != end - start:
            raise TreeError(f"the stored tree lacks leaves in [{start}, {end})")
        return out

    async def _level_nodes(self, level: int, start: int, end: int) -> list[bytes]:
        """The complete nodes [start, end) at a height that is a multiple of 8."""
        if level == 0:
            return await self.leaves(start, end)
        tile_level = level // TILE_HEIGHT
        first, last = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        records = await self._conn.fetch(TILES, tile_level, list(range(first, last + 1)))
        tiles = {r["idx"]: bytes(r["hashes"]) for r in records}
        out: list[bytes] = []
        for t in range(first, last + 1):
            lo, hi = max(start, t * TILE_WIDTH), min(end, (t + 1) * TILE_WIDTH)
            blob = tiles.get(t, b"")
            have = len(blob) // HB
            for j in range(lo, hi):
                k = j - t * TILE_WIDTH
                if k < have:
                    out.append(blob[k * HB : (k + 1) * HB])
                else:  # not tiled yet: from the 256 nodes below it
                    below = await self._level_nodes(
                        level - TILE_HEIGHT, j * TILE_WIDTH, (j + 1) * TILE_WIDTH
                    )
                    out.append(merkle.root_of(below))
        return out

    async def _prefetch(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The tiles (level, index) holding the base nodes of `wanted`, in two queries:
        level 0 from the batches, the others from tlog_tile (each at its widest)."""
        needed: set[tuple[int, int]] = set()
        for height, index in wanted:
            base = height - height % TILE_HEIGHT
            span = 1 << (height - base)
            needed.add((base // TILE_HEIGHT, (index * span) // TILE_WIDTH))
        tiles: dict[tuple[int, int], bytes] = {}
        leaf_tiles = sorted(i for level, i in needed if level == 0)
        if leaf_tiles:
            parts: dict[int, list[bytes]] = {}
            for r in await self._conn.fetch(LEAF_TILES, leaf_tiles):
                parts.setdefault(r["idx"], []).append(bytes(r["hashes"]))
            tiles.update({(0, i): b"".join(blobs) for i, blobs in parts.items()})
        upper = sorted((level, i) for level, i in needed if level > 0)
        if upper:
            levels, indexes = [level for level, _ in upper], [i for _, i in upper]
            for r in await self._conn.fetch(UPPER_TILES, levels, indexes):
                tiles[(r["level"], r["idx"])] = bytes(r["hashes"])
        return tiles

    async def fetch(self, wanted: set[tuple[int, int]]) -> None:
        """Load the perfect nodes (height, index) asked for."""
        tiles = await self._prefetch(wanted)
        for height, index in sorted(wanted):
            if (height, index) in self._nodes:
                continue
            base = height - height % TILE_HEIGHT
            span = 1 << (height - base)
            start = index * span
            blob = tiles.get((base // TILE_HEIGHT, start // TILE_WIDTH), b"")
            offset = (start % TILE_WIDTH) * HB
            if len(blob) >= offset + span * HB:  # the common case: all in one fetched tile
                below = [blob[o : o + HB] for o in range(offset, offset + span * HB, HB)]
                self._nodes[(height, index)] = merkle.root_of(below)
                continue
            if (height, index) in self._nodes:
                continue
            base = height - height % TILE_HEIGHT
            span = 1 << (height - base)
            below = await self._level_nodes(base, index * span, (index + 1) * span)
            self._nodes[(height, index)] = merkle.root_of(below)

    def node(self, height: int, index: int) -> bytes:
        return self._nodes[(height, index)]

    async def run(self, build: Callable[[merkle.NodeFn], object]) -> object:
        """Run a proof or root computation over stored nodes: record what it needs, fetch, run."""
        wanted: set[tuple[int, int]] = set()

        def record(height: int, index: int) -> bytes:
            wanted.add((height, index))
            return bytes(HB)

        build(record)
        await self.fetch(wanted)
        return build(self.node)

    async def root(self, size: int) -> bytes:
        if size == 0:
            return merkle.EMPTY_ROOT
        value = await self.run(lambda node: merkle.range_hash(node, 0, size))
        assert isinstance(value, bytes)
        return value

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        value = await self.run(lambda node: merkle.inclusion_proof(node, index, size))
        assert isinstance(value, list)
        return value

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        value = await self.run(lambda node: merkle.consistency_proof(node, old_size, new_size))
        assert isinstance(value, list)
        return value


async def append(
    conn: Conn,
    *,
    first: int,
    hashes: list[bytes],
    row_seqs: str,
    action_ids: str,
) -> None:
    """Store one batch of leaves at `first`, and the tiles it completes or grows."""
    await conn.execute(INSERT_BATCH, first, len(hashes), row_seqs, action_ids, b"".join(hashes))
    old, new = first, first + len(hashes)
    tree = Tree(conn, first=first, appended=hashes)
    level = 1
    while new >> (TILE_HEIGHT * level):
        shift = TILE_HEIGHT * level
        lo_count, hi_count = old >> shift, new >> shift
        if hi_count > lo_count:
            for t in range(lo_count // TILE_WIDTH, (hi_count - 1) // TILE_WIDTH + 1):
                width = min(TILE_WIDTH, hi_count - t * TILE_WIDTH)
                nodes = await tree._level_nodes(
                    TILE_HEIGHT * level, t * TILE_WIDTH, t * TILE_WIDTH + width
                )
                await conn.execute(INSERT_TILE, level, t, width, b"".join(nodes))
        level += 1


async def row_leaf_index(conn: Conn, seq: int) -> int | None:
    """The leaf index of the row with this seq, or None before it is in the tree."""
    record = await conn.fetchrow(ROW_LEAF, seq)
    if record is None:
        return None
    return int(record["first"]) + int(record["offset"])


async def last_checkpoint(conn: Conn) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(LAST_CHECKPOINT)
    return record


async def checkpoint_with_cosignatures(conn: Conn, size: int) -> str | None:
    """The signed note of the checkpoint of `size`, its cosignature lines appended."""
    record = await conn.fetchrow(CHECKPOINT_AT, size)
    if record is None:
        return None
    lines = [r["line"] for r in await conn.fetch(COSIGNATURES, size)]
    note: str = record["note"] + "".join(lines)
    return note


RECORD_STOP = "INSERT INTO tlog_seal_stop (reason) VALUES ($1)"
# Stopped while the latest stop is later than the latest checkpoint signed.
LOG_STATUS = """
SELECT (SELECT coalesce(max(first + size), 0) FROM tlog_batch) AS tree_size,
       c.size AS checkpoint_size, c.note, c.signed_at,
       s.at AS stopped_at, s.reason AS stopped_reason
FROM (SELECT 1) one
LEFT JOIN LATERAL (SELECT size, note, signed_at FROM tlog_checkpoint
                   ORDER BY size DESC LIMIT 1) c ON true
LEFT JOIN LATERAL (SELECT at, reason FROM tlog_seal_stop ORDER BY at DESC LIMIT 1) s ON true
"""
RECORD_WITNESS = """
INSERT INTO tlog_witness_status (url, cosigned_size, error) VALUES ($1, $2, $3)
"""
WITNESSES = """
SELECT DISTINCT ON (url) url,
       (SELECT max(w.cosigned_size) FROM tlog_witness_status w WHERE w.url = s.url)
           AS last_cosigned_size,
       error AS last_error, at
FROM tlog_witness_status s ORDER BY url, at DESC
"""
LAST_COSIGNED = """
SELECT max(cosigned_size) FROM tlog_witness_status WHERE url = $1 AND error IS NULL
"""


async def record_stop(conn: Conn, reason: str) -> None:
    await conn.execute(RECORD_STOP, reason)


async def log_status(conn: Conn) -> asyncpg.Record:
    """Tree size, the latest checkpoint, and why sealing stopped (None while it runs)."""
    record = await conn.fetchrow(LOG_STATUS)
    assert record is not None  # aggregates: always one row
    return record


def stopped_reason(status: asyncpg.Record) -> str | None:
    """Why sealing stopped, when no checkpoint was signed since it said so."""
    if status["stopped_at"] is None:
        return None
    if status["signed_at"] is not None and status["signed_at"] > status["stopped_at"]:
        return None
    reason: str = status["stopped_reason"]
    return reason


async def record_cosignature(conn: Conn, size: int, witness: str, line: str) -> None:
    await conn.execute(INSERT_COSIGNATURE, size, witness, line)


async def record_witness(
    conn: Conn, url: str, *, cosigned_size: int | None, error: str | None
) -> None:
    await conn.execute(RECORD_WITNESS, url, cosigned_size, error)


async def last_cosigned(conn: Conn, url: str) -> int:
    """The largest size the witness at `url` cosigned (0 for none)."""
    return int(await conn.fetchval(LAST_COSIGNED, url) or 0)


async def witnesses(conn: Conn) -> list[asyncpg.Record]:
    """Each witness's last cosigned size and its last error (None when its last answer was good)."""
    records: list[asyncpg.Record] = await conn.fetch(WITNESSES)
    return records
