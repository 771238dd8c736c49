"""The batch writer: many events in one idempotent INSERT, bad rows isolated by bisection.

The statements are service/store/writes.py's; this decides what a failure means."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from service.events import AuditEvent
from service.redaction import redact_sensitive_in_string
from service.store.writes import insert_rows, write_json_events
from workers.retry import Failure, classify

__all__ = ["Rejected", "WriteResult", "write_events", "write_json_events"]


@dataclasses.dataclass
class Rejected:
    """An event that cannot be stored, with the reason (redacted)."""

    index: int
    event: Any  # the AuditEvent PostgreSQL refused, or the raw item that was not an event
    reason: str


@dataclasses.dataclass
class WriteResult:
    # (seq, ts) of the new rows; redelivered events count as already stored, not inserted.
    inserted: list[tuple[int, datetime]] = dataclasses.field(default_factory=list)
    rejected: list[Rejected] = dataclasses.field(default_factory=list)


async def write_events(
    conn: asyncpg.Connection,
    events: Sequence[AuditEvent],
    *,
    received_via: str,
    keyed: bool = False,
) -> WriteResult:
    """Store `events`; rows PostgreSQL rejects are isolated and returned, the rest stored.

    `keyed`: each event's ts was fixed with its id by the producer (INSERT_KEYED_EVENTS).
    `received_via`: who delivered them (contract §5 Provenance), written on every row.
    Raises on anything that is not a data error (the caller's retry policy decides).
    """
    result = WriteResult()
    await _write(conn, list(enumerate(events)), result, keyed=keyed, via=received_via)
    return result


async def _write(
    conn: asyncpg.Connection,
    batch: list[tuple[int, AuditEvent]],
    result: WriteResult,
    *,
    keyed: bool,
    via: str,
) -> None:
    try:
        rows = await insert_rows(conn, [e for _, e in batch], keyed=keyed, via=via)
    except asyncpg.PostgresError as exc:
        if classify(exc) is not Failure.DATA:
            raise
        if len(batch) == 1:
            index, event = batch[0]
            reason = f"{type(exc).__name__}: {redact_sensitive_in_string(str(exc))}"
            result.rejected.append(Rejected(index, event, reason))
            return
        # Bisect: log2(n) statements find each bad row; the good ones are stored on the way.
        middle = len(batch) // 2
        await _write(conn, batch[:middle], result, keyed=keyed, via=via)
        await _write(conn, batch[middle:], result, keyed=keyed, via=via)
        return
    result.inserted.extend((row["seq"], row["ts"]) for row in rows)
