"""Admin changes to destinations, the same for the API and the CLI (contract §11).

Each is stored with its audit event in one transaction, by the schema's functions (`by`: who
asked); a name that is taken or unknown is said by the return value, never by a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Unpack

from service.events import Entity
from service.store import destinations as store
from service.store.db import Conn


def entity(name: str) -> Entity:
    """The entity of a destination's audit events."""
    return Entity(type="destination", id=name[:256])


async def add(conn: Conn, by: dict[str, Any], **new: Unpack[store.NewDestination]) -> bool:
    """Add a checked destination, recorded as destination.created; False when the name is
    taken. Its secret is stored apart; the record says only whether there is one."""
    return await store.add_destination(conn, by=by, **new) is not None


async def backfill(
    conn: Conn, by: dict[str, Any], destination: store.Destination, since: datetime
) -> int | None:
    """Move the destination back to the first row stored at or after `since`, recorded as
    destination.backfilled; how many rows it has to send again (None: it is gone)."""
    position = await store.backfill(conn, destination.id, since, by=by)
    if position is None:
        return None
    lag_events, _ = await store.lag(conn, position)
    return lag_events
