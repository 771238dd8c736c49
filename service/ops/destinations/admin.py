"""Admin changes to destinations, the same for the API and the CLI (contract §11).

Each is recorded (through the caller's `Record`: the API's or the CLI's audit trail) before it
is stored; a name that is taken or unknown is said by the return value, never by a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, Unpack

from service.events import Entity
from service.store import destinations as store
from service.store.db import Conn


class Record(Protocol):
    """Writes the audit event of an admin action before it is done (raises when it cannot)."""

    async def __call__(
        self, action: str, *, entity: Entity | None = None, metadata: dict[str, Any] | None = None
    ) -> None: ...


def entity(name: str) -> Entity:
    """The entity of a destination's audit events."""
    return Entity(type="destination", id=name[:256])


async def add(conn: Conn, record: Record, **new: Unpack[store.NewDestination]) -> bool:
    """Add a checked destination, recorded as destination.created; False when the name is
    taken. Its secret is stored apart; the record says only whether there is one."""
    name, since = new["name"], new["since"]
    if await store.get_destination(conn, name) is not None:
        return False
    await record(
        "destination.created",
        entity=entity(name),
        metadata={
            "name": name,
            "type": new["kind"],
            "url": new["url"],
            "format": new["format"],
            "filter": new["filter"],
            "secret_set": new["secret"] is not None,
            "since": since.isoformat() if since else None,
        },
    )
    return await store.add_destination(conn, **new) is not None


async def backfill(
    conn: Conn, record: Record, destination: store.Destination, since: datetime
) -> int:
    """Move the destination back to the first row stored at or after `since`, recorded as
    destination.backfilled; how many rows it has to send again."""
    await record(
        "destination.backfilled",
        entity=entity(destination.name),
        metadata={"name": destination.name, "since": since.isoformat()},
    )
    position = await store.backfill(conn, destination.id, since)
    lag_events, _ = await store.lag(conn, position)
    return lag_events
