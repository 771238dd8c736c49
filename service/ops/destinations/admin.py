"""Admin changes to destinations, the same for the API and the CLI (contract §11).

Each is recorded (through the caller's `Record`: the API's or the CLI's audit trail) before it
is stored; a name that is taken or unknown is said by the return value, never by a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

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


async def add(
    conn: Conn,
    record: Record,
    *,
    name: str,
    kind: str,
    url: str,
    format: str,
    filter: str,
    filter_json: dict[str, Any],
    options: dict[str, Any],
    secret: str | None,
    since: datetime | None,
    created_by: str,
) -> bool:
    """Add a checked destination, recorded as destination.created; False when the name is
    taken. Its secret is stored apart; the record says only whether there is one."""
    if await store.get_destination(conn, name) is not None:
        return False
    await record(
        "destination.created",
        entity=entity(name),
        metadata={
            "name": name,
            "type": kind,
            "url": url,
            "format": format,
            "filter": filter,
            "secret_set": secret is not None,
            "since": since.isoformat() if since else None,
        },
    )
    ident = await store.add_destination(
        conn,
        name=name,
        kind=kind,
        url=url,
        format=format,
        filter=filter,
        filter_json=filter_json,
        options=options,
        secret=secret,
        since=since,
        created_by=created_by,
    )
    return ident is not None
