"""The opaque cursor of a task listing: the segment it stopped in and its last entry there."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Literal

import msgspec

from service.ops.task_model import InvalidCursor, Status

Segment = Literal["queue", "failed", "complete"]
SEGMENTS: tuple[Segment, ...] = ("queue", "failed", "complete")
SEGMENT_STATUSES: dict[str, frozenset[Status]] = {
    "queue": frozenset({"queued", "in_progress", "retrying"}),
    "failed": frozenset({"failed"}),
    "complete": frozenset({"complete"}),
}


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a listing stopped: a segment and the last entry it examined there."""

    segment: Segment
    score: int = 0
    id: str = ""


def encode_cursor(position: Position) -> str:
    """Make the opaque cursor for `position`."""
    raw = msgspec.json.encode([position.segment, position.score, position.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """Read a cursor made by encode_cursor; raise InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        segment, score, task_id = msgspec.json.decode(raw, type=tuple[str, int, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("not a cursor this listing handed out") from None
    if segment not in SEGMENTS:
        raise InvalidCursor("not a cursor this listing handed out")
    return Position(segment, score, task_id)
