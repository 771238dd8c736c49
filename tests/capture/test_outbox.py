"""Outbox rows into events: the SQLAlchemy capture's shape, ids fixed by the row, and no row
the application can write that stops the relay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from service.capture.outbox import CapturedTable, Origin, event_for, event_id, fitting
from service.events import finalize
from service.producer.changes import changes_between

ORIGIN = Origin(uuid.UUID("00000000-0000-4000-8000-000000000001"), "shop")
ORDERS = CapturedTable(
    table_id=1,
    schema_name="sales",
    table_name="orders",
    entity="order",
    key_columns=("region", "number"),
    columns=("region", "number", "total", "note", "pin", "meta"),
    ignore_fields=frozenset({"meta.etag"}),
    mask_columns=("pin",),
)
NOW = datetime.now(UTC)


def row(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 41,
        "table_id": 1,
        "operation": "u",
        "entity_id": "eu:7",
        "changes": "{}",
        "captured_at": NOW,
        "xid": "1234",
        "actor_id": None,
        "actor_type": None,
        "request_id": None,
    }
    return base | fields


def event(
    *,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
    masked: dict[str, list[bool]] | None = None,
    **fields: Any,
) -> Any:
    """The event of an outbox row whose pairs are made of `old` and `new` as the trigger
    makes them: a pair per column that differs (every non-null one of a created or deleted
    row), a masked column's pair saying only whether it had and has a value."""
    old, new = old or {}, new or {}
    pairs: dict[str, Any] = {
        name: [old.get(name), new.get(name)]
        for name in [*old, *(n for n in new if n not in old)]
        if old.get(name) != new.get(name)
    }
    pairs.update(masked or {})
    made = row(changes=msgspec.json.encode(pairs).decode(), **fields)
    return event_for(made, ORDERS, ORIGIN, max_event_bytes=64 * 1024, max_future_s=300)


def test_an_update_is_the_diff_changes_between_makes_in_column_order() -> None:
    # jsonb hands keys back in its own order (shortest first): the diff follows the table's.
    old = {"meta": {"etag": "a", "v": 1}, "note": "x", "total": 5, "region": "eu", "number": 7}
    new = {"meta": {"etag": "b", "v": 2}, "note": "y", "total": 5, "region": "eu", "number": 7}
    made = event(old=old, new=new, masked={"pin": [True, True]})
    assert made.action == "order.updated"
    assert made.entity.type == "order" and made.entity.id == "eu:7"
    assert msgspec.to_builtins(made.changes) == [
        {"field": "note", "old": "x", "new": "y"},
        {"field": "pin", "old": "[REDACTED]", "new": "[REDACTED]"},
        {"field": "meta.v", "old": 1, "new": 2},
    ]
    # The very diff the SQLAlchemy capture would make of the same values (less the mask).
    ordered = ["region", "number", "total", "note", "meta"]
    assert made.changes[0::2] == changes_between(
        {k: old[k] for k in ordered}, {k: new[k] for k in ordered}, ignore={"meta.etag"}
    )
    assert made.source == "db:shop/sales.orders"
    assert made.metadata == {"table": "orders", "schema": "sales", "transaction_id": "1234"}


def test_an_update_of_ignored_fields_only_is_no_event() -> None:
    old = {"region": "eu", "number": 7, "meta": {"etag": "a"}}
    new = {"region": "eu", "number": 7, "meta": {"etag": "b"}}
    assert event(old=old, new=new) is None


def test_a_created_and_a_deleted_row_list_every_value_on_one_side() -> None:
    values = {"region": "eu", "number": 7, "total": None, "note": "n"}
    created = event(operation="c", new=values, masked={"pin": [False, True]})
    assert created.action == "order.created"
    assert msgspec.to_builtins(created.changes) == [
        {"field": "region", "new": "eu"},
        {"field": "number", "new": 7},
        {"field": "note", "new": "n"},
        {"field": "pin", "new": "[REDACTED]"},
    ]
    deleted = event(operation="d", old=values)
    assert deleted.action == "order.deleted"
    assert [c.field for c in deleted.changes] == ["region", "number", "note"]
    assert all(c.new is None for c in deleted.changes)


def test_the_id_is_fixed_by_the_database_and_the_row() -> None:
    old, new = {"note": "a"}, {"note": "b"}
    first = event(old=old, new=new)
    again = event(old=old, new=new)
    assert first.id == again.id == event_id(ORIGIN, 41, NOW)
    assert first.ts == NOW
    assert event(id=42, old=old, new=new).id != first.id
    other = Origin(uuid.UUID("00000000-0000-4000-8000-000000000002"), "shop")
    assert event_id(other, 41, NOW) != first.id
    assert first.id.version == 7  # time-ordered like the client's ids


def test_the_transaction_context_becomes_actor_and_request() -> None:
    made = event(
        old={"note": "a"},
        new={"note": "b"},
        actor_id="svc-9",
        actor_type="service",
        request_id="req-1",
    )
    assert (made.actor.id, made.actor.type, made.request.id) == ("svc-9", "service", "req-1")
    # A type auditq does not know is kept, not fatal: the row must still become an event.
    odd = event(old={"note": "a"}, new={"note": "b"}, actor_id="u", actor_type="boss")
    assert odd.actor.type == "user" and odd.metadata["actor_type"] == "boss"
    finalize(odd)


def fit(event: Any) -> Any:
    return fitting(event, max_event_bytes=64 * 1024, max_future_s=300)


def test_no_row_the_application_writes_makes_an_event_the_queue_refuses() -> None:
    huge = "x" * 200_000
    made = fit(event(old={"note": "a"}, new={"note": huge}, actor_id="u" * 5000))
    finalize(made, max_bytes=64 * 1024)
    assert made.changes[0].new.startswith("[200002 bytes")
    assert made.metadata["values_cut"] is True and len(made.actor.id) == 1024
    wide = {f"c{i}": "y" * 900 for i in range(200)}
    made = fit(event(operation="c", new=wide))
    finalize(made, max_bytes=64 * 1024)
    assert made.changes is None and len(made.metadata["changed_fields"]) == 100
    ahead = fit(event(old={"note": "a"}, new={"note": "b"}, captured_at=NOW + timedelta(hours=2)))
    finalize(ahead)
    assert ahead.metadata["captured_at"] == str(NOW + timedelta(hours=2))
    # JSON nested past the limit inside a jsonb column: stored without the diff.
    deep: Any = "bottom"
    for _ in range(80):
        deep = [deep]
    nested = fit(event(old={"meta": None}, new={"meta": deep}))
    finalize(nested)
    assert nested.changes is None and nested.metadata["changed_fields"] == ["meta"]
    # What fits is left as it is (the relay asks only about refused events).
    plain = event(old={"note": "a"}, new={"note": "b"})
    assert fit(plain) is plain
