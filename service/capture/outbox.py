"""The outbox's rows and the audit events they become."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, get_args

import msgspec

from service.errors import InvalidEvent
from service.events import (
    Actor,
    ActorType,
    AuditEvent,
    Change,
    Entity,
    RequestInfo,
    derived_event_id,
    finalize,
)
from service.producer.changes import DEFAULT_IGNORE, changes_between
from service.redaction import REDACTED

SCHEMA = "auditq_capture"
_pairs_decoder = msgspec.json.Decoder(dict[str, tuple[Any, Any]])
NOTIFY_CHANNEL = "auditq_capture"
ID_SEPARATOR = ":"  # between the values of a composite key, as the SQLAlchemy capture joins them
TEXT_MAX_CHARS = 1024  # an event's ids and names (service.events Text)
LARGE_VALUE_CHARS = 1024  # what a value over the event's size limit is cut to
KINDS: Final = {"c": "created", "u": "updated", "d": "deleted"}
ACTOR_TYPES = frozenset(get_args(ActorType))
DEFAULT_ACTOR_TYPE: Final = "user"

SELECT_INSTALLATION = """
SELECT database_id, pg_catalog.current_database() AS database
FROM auditq_capture.installation
"""
SELECT_TABLES = """
SELECT table_id, schema_name, table_name, entity, key_columns, columns, ignore_fields,
       mask_columns
FROM auditq_capture.captured_tables
"""
# In capture order: one row's changes are in the order the database committed them (a
# second writer of a row waits for the first to commit before its trigger runs).
SELECT_BATCH = """
SELECT id, table_id, operation::text AS operation, entity_id, changes, captured_at,
       xid::text AS xid, actor_id, actor_type, request_id
FROM auditq_capture.outbox
ORDER BY id
LIMIT $1
"""
DELETE_ROWS = "DELETE FROM auditq_capture.outbox WHERE id = ANY($1::bigint[])"


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedTable:
    """One captured table as its registry row describes it."""

    table_id: int
    schema_name: str
    table_name: str
    entity: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]
    ignore_fields: frozenset[str]
    mask_columns: tuple[str, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.schema_name}.{self.table_name}"

    @classmethod
    def from_row(cls, row: Any) -> CapturedTable:
        """Build one from a SELECT_TABLES row."""
        return cls(
            table_id=row["table_id"],
            schema_name=row["schema_name"],
            table_name=row["table_name"],
            entity=row["entity"],
            key_columns=tuple(row["key_columns"]),
            columns=tuple(row["columns"]),
            ignore_fields=frozenset(row["ignore_fields"]),
            mask_columns=tuple(row["mask_columns"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """The application database the outbox belongs to."""

    database_id: uuid.UUID
    database: str


def event_id(origin: Origin, outbox_id: int, captured_at: datetime) -> uuid.UUID:
    """The event id of an outbox row: the same row gives the same id, however often sent.

    A UUIDv7 carrying the capture time (so ids index well), the rest a hash of the
    database's identity and the row's id."""
    return derived_event_id(
        f"db:{origin.database_id}", outbox_id, int(captured_at.timestamp() * 1000)
    )


def event_for(
    row: Any,
    table: CapturedTable,
    origin: Origin,
    *,
    extra_keys: frozenset[str] = frozenset(),
    max_event_bytes: int,
    max_future_s: float,
) -> AuditEvent | None:
    """The event of one outbox row, or None for an update that changed only ignored fields.

    Never raises for what the application wrote: ids are cut to their limit, an actor type
    auditq does not know is kept in metadata (and `fitting` makes any other event fit)."""
    kind = KINDS[row["operation"]]
    # The row's pairs: what differs (a masked column's say only whether it had a value
    # before and has one after), in the table's column order.
    pairs = _pairs_decoder.decode(row["changes"])
    masks = set(table.mask_columns)
    masked = {name: pair for name, pair in pairs.items() if name in masks}
    kept = _in_table_order(
        {name: pair for name, pair in pairs.items() if name not in masks}, table.columns
    )
    before = {name: pair[0] for name, pair in kept.items()}
    after = {name: pair[1] for name, pair in kept.items()}
    changes = changes_between(
        before, after, ignore=DEFAULT_IGNORE | table.ignore_fields, redact_extra_keys=extra_keys
    )
    if masked:
        changes += [
            Change(field=name, old=REDACTED if pair[0] else None, new=REDACTED if pair[1] else None)
            for name, pair in masked.items()
        ]
        order = {name: index for index, name in enumerate(table.columns)}
        changes.sort(key=lambda change: order.get(change.field.split(".", 1)[0], len(order)))
    if kind == "updated" and not changes:
        return None
    metadata: dict[str, Any] = {
        "table": table.table_name,
        "schema": table.schema_name,
        "transaction_id": row["xid"],
    }
    actor = None
    if row["actor_id"]:
        given: str = row["actor_type"] or DEFAULT_ACTOR_TYPE
        actor_type: ActorType = DEFAULT_ACTOR_TYPE
        if given in ACTOR_TYPES:
            actor_type = given  # type: ignore[assignment]  # checked against the Literal's values
        else:
            metadata["actor_type"] = given[:TEXT_MAX_CHARS]
        actor = Actor(id=row["actor_id"][:TEXT_MAX_CHARS], type=actor_type)
    request = RequestInfo(id=row["request_id"][:TEXT_MAX_CHARS]) if row["request_id"] else None
    event = AuditEvent(
        id=event_id(origin, row["id"], row["captured_at"]),
        ts=row["captured_at"],
        action=f"{table.entity}.{kind}",
        actor=actor,
        entity=Entity(type=table.entity, id=row["entity_id"][:TEXT_MAX_CHARS]),
        request=request,
        changes=changes or None,
        metadata=metadata,
        source=f"db:{origin.database}/{table.qualified_name}"[:TEXT_MAX_CHARS],
    )
    return event


def _in_table_order(values: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """A row's values in the table's column order."""
    ordered = {name: values[name] for name in columns if name in values}
    if len(ordered) < len(values):  # a column added since install: after the known ones
        ordered.update(values)
    return ordered


def fitting(
    event: AuditEvent,
    *,
    extra_keys: frozenset[str] = frozenset(),
    max_event_bytes: int,
    max_future_s: float,
) -> AuditEvent:
    """The event if the queue accepts it, else the nearest one it does: large values cut,
    then the diff left out, then (a clock far ahead of auditq's) the time of now.

    The relay asks only about an event the client did not enqueue: whether it is the
    application's data (made to fit, so no row stops the relay) or Redis (sent again)."""
    attempts: tuple[Callable[[AuditEvent], AuditEvent], ...] = (
        lambda e: e,
        _with_values_cut,
        _without_changes,
        _stamped_now,
        lambda e: _stamped_now(_without_changes(e)),
    )
    for attempt in attempts:
        candidate = attempt(event)
        try:
            finalize(
                candidate,
                extra_keys=extra_keys,
                max_bytes=max_event_bytes,
                max_future_s=max_future_s,
                validate=True,  # as the client and the worker check it
            )
        except (InvalidEvent, msgspec.ValidationError):
            continue
        return candidate
    return _stamped_now(_without_changes(event))


def _with_values_cut(event: AuditEvent) -> AuditEvent:
    # A big text or JSON column: each large value becomes a note of its size, so the change
    # is still recorded.
    changes = [
        Change(field=change.field, old=_cut(change.old), new=_cut(change.new))
        for change in event.changes or ()
    ]
    metadata = dict(event.metadata or {}, values_cut=True)
    return msgspec.structs.replace(event, changes=changes or None, metadata=metadata)


def _without_changes(event: AuditEvent) -> AuditEvent:
    fields = [change.field for change in event.changes or ()]
    metadata = dict(event.metadata or {}, changed_fields=fields[:100])
    return msgspec.structs.replace(event, changes=None, metadata=metadata)


def _stamped_now(event: AuditEvent) -> AuditEvent:
    metadata = dict(event.metadata or {}, captured_at=str(event.ts))
    return msgspec.structs.replace(event, ts=datetime.now(UTC), metadata=metadata)


def _cut(value: object) -> object:
    encoded = msgspec.json.encode(value)
    if len(encoded) <= LARGE_VALUE_CHARS:
        return value
    return f"[{len(encoded)} bytes, too large for an audit event]"
