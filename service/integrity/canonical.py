"""The canonical form of rows and admin actions, and their 40-byte checkpoint entries.

A row's canonical form (version 1, docs/integrity.md) is PostgreSQL's binary form of the
record of ROW_COLUMNS: int32 column count, then per column its type OID (int32), length
(int32, -1 for NULL) and the type's binary send format. The same record arrives in a
binary COPY, so the verifier hashes bytes the server sent instead of trusting a digest the
server computed. The records as SQL (ROW_RECORD, ACTION_RECORD) are
service/store/verify_reads.py's.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

ROW_COLUMNS = (
    "seq", "id", "ts", "received_at", "action", "category", "severity", "outcome",
    "actor_id", "actor_type", "actor_name", "actor_email",
    "entity_type", "entity_id", "entity_name", "tenant",
    "request_id", "ip", "user_agent", "method", "path", "status", "duration_ms",
    "changes", "metadata", "presentation", "source", "received_via",
)  # fmt: skip

DIGEST_BYTES = 16
_sha256 = hashlib.sha256
ENTRY_BYTES = 40  # seq (8) || id (16) || digest (16)
# Offsets in a record: count (4), then seq's oid+len (8) and value (8), id's oid+len (8).
_SEQ = slice(12, 20)
_ID = slice(28, 44)
_ACTION_ID = _SEQ  # an action record starts with its int8 id, like a row with its seq
NO_ID = bytes(16)


def digest(record: bytes | memoryview) -> bytes:
    """The 16-byte digest of one canonical record."""
    return hashlib.sha256(record).digest()[:DIGEST_BYTES]


def row_entry(record: bytes | memoryview) -> bytes:
    """The checkpoint entry of a row record: seq || id || digest."""
    return bytes(record[_SEQ]) + bytes(record[_ID]) + _sha256(record).digest()[:DIGEST_BYTES]


def action_entry(record: bytes | memoryview) -> bytes:
    """The checkpoint entry of an action record: id || 16 zero bytes || digest."""
    return bytes(record[_ACTION_ID]) + NO_ID + digest(record)


def entry_seq(entry: bytes | memoryview) -> int:
    return int.from_bytes(entry[:8], "big", signed=True)


def iter_entries(blob: bytes) -> Iterator[bytes]:
    """The entries of a checkpoint blob, in order."""
    for offset in range(0, len(blob), ENTRY_BYTES):
        yield blob[offset : offset + ENTRY_BYTES]


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"
_TUPLE = struct.Struct("!hi")  # field count, length of the one field


class CopyRecords:
    """Split a binary COPY of one record column into records, chunk by chunk."""

    def __init__(self) -> None:
        self._buffer = b""
        self._header_done = False

    def feed(self, chunk: bytes) -> list[memoryview]:
        """Take the next chunk; return the records it completed."""
        data = self._buffer + chunk if self._buffer else chunk
        view = memoryview(data)
        pos = 0
        if not self._header_done:
            if len(data) < 19:
                self._buffer = data
                return []
            if data[:11] != _COPY_HEADER:
                raise ValueError("not a binary COPY stream")
            extension = int.from_bytes(data[15:19], "big")
            pos = 19 + extension
            self._header_done = True
        records = []
        end = len(data)
        unpack = _TUPLE.unpack_from
        while end - pos >= 2:
            if end - pos < 6:
                if data[pos : pos + 2] == b"\xff\xff":
                    pos += 2
                    continue
                break
            count, length = unpack(data, pos)
            if count == -1:  # trailer
                pos += 2
                continue
            if end - pos - 6 < length:
                break
            records.append(view[pos + 6 : pos + 6 + length])
            pos += 6 + length
        self._buffer = data[pos:]
        return records
