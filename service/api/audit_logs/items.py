"""What the audit-log reads answer: an item, a page of items, the statistics.

Declared as msgspec structs, like the queries (query.py): the OpenAPI document's 200 schemas
are made from these, and tests decode real responses with them, so the document says what the
routes send. The routes build their bodies as plain data (rows.py `item`): an item is also the
leaf data of the integrity log (docs/integrity.md), whose bytes must not move.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import msgspec

from service.events import Outcome, Severity


class _Part(msgspec.Struct, frozen=True, kw_only=True):
    """A nested part of an item: only the fields that have a value are sent."""


class ItemActor(_Part, frozen=True):
    """Who acted (an erased subject's id is its pseudonym)."""

    id: str
    type: str | None = None
    name: str | None = None
    email: str | None = None


class ItemEntity(_Part, frozen=True):
    """What was acted on."""

    type: str | None = None
    id: str | None = None
    name: str | None = None


class ItemRequest(_Part, frozen=True):
    """The request that caused the event."""

    id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    duration_ms: float | None = None


class ItemChange(_Part, frozen=True):
    """One changed field."""

    field: str
    old: Any = None
    new: Any = None


class ItemPresentation(_Part, frozen=True):
    """A stable code and its parameters, for a console to render."""

    code: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class AuditLogItem(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event, plus when it was written and who delivered it."""

    id: uuid.UUID
    ts: datetime
    action: str
    category: str
    severity: Severity
    outcome: Outcome
    actor: ItemActor | None
    entity: ItemEntity | None
    tenant: str | None
    request: ItemRequest | None
    changes: list[ItemChange] | None
    metadata: dict[str, Any] | None
    presentation: ItemPresentation
    source: str | None
    received_at: datetime
    received_via: str | None


class AuditLogPage(msgspec.Struct, frozen=True, kw_only=True):
    """One keyset page: the items, and the cursor of the next page (null on the last)."""

    items: list[AuditLogItem]
    next_cursor: str | None
    total: Total | None = None  # only when asked with count=true


class Total(msgspec.Struct, frozen=True, kw_only=True):
    """How many rows match the filters; `exact` false: the planner's estimate, not a count."""

    count: int
    exact: bool


class DayCount(msgspec.Struct, frozen=True, kw_only=True):
    """Rows stored with ts on one UTC day."""

    day: date
    count: int


class HourCount(msgspec.Struct, frozen=True, kw_only=True):
    """Rows stored with ts in one UTC hour (named by its start)."""

    hour: datetime
    count: int


class ActorCount(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of one actor, and the name its latest row in the window gives it (if any)."""

    actor_id: str
    actor_name: str | None = None
    count: int


class ActionCount(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of one action."""

    action: str
    count: int


class SeverityCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Rows by severity."""

    info: int
    notice: int
    warning: int
    critical: int


class OutcomeCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Rows by outcome."""

    success: int
    failure: int


class AuditLogStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts over the window: every day of it (zeros included), the top actors and actions;
    with bucket=hour also every hour of it."""

    per_day: list[DayCount]
    per_hour: list[HourCount] | None = None
    top_actors: list[ActorCount]
    top_actions: list[ActionCount]
    by_severity: SeverityCounts
    by_outcome: OutcomeCounts
