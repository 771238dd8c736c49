"""SQLAlchemy change capture: each committed insert, update and delete of an opted-in model
becomes one audit event (`<entity>.created|updated|deleted`) with the diff of its columns.

Rows are collected after each flush, emitted through `AuditClient.capture_nowait` once the
session's outermost transaction commits, and dropped when it (or the savepoint they were
flushed in) rolls back. Nothing here raises into the application: a failure is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

try:
    from sqlalchemy import event, inspect
    from sqlalchemy.orm import InstanceState, Mapper, Session, SessionTransaction
    from sqlalchemy.orm.attributes import instance_state
    from sqlalchemy.orm.base import NO_VALUE
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "service.producer.sqlalchemy needs SQLAlchemy 2: pip install 'auditq[sqlalchemy]'"
    ) from exc

from service.errors import ConfigError
from service.events import AuditEvent, Entity, new_event_id
from service.producer.changes import DEFAULT_IGNORE, changes_between
from service.producer.client import AuditClient
from service.redaction import redact_sensitive_in_string

__all__ = ["Audited", "ChangeCapture", "audit_model", "capture_changes"]

logger = logging.getLogger(__name__)

Kind = Literal["created", "updated", "deleted"]
ModelT = TypeVar("ModelT", bound=type)

# An entity name makes the action `<entity>.<kind>`, which must match the event's pattern.
ENTITY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,6}$")
ID_SEPARATOR = ":"  # between the values of a composite primary key
PENDING = "auditq_changes"  # the session.info key of the rows awaiting the commit


class Audited:
    """Mixin that opts a mapped class in: its committed row changes become audit events.

    `__audit_entity__` names the entity (default: the class name in snake_case);
    `__audit_ignore__` lists attributes never put in a diff, beside the bookkeeping ones.
    """

    __audit_entity__: ClassVar[str | None] = None
    __audit_ignore__: ClassVar[Collection[str]] = ()


@dataclasses.dataclass(frozen=True)
class _Options:
    entity: str | None
    ignore: frozenset[str]


_registered: dict[type, _Options] = {}


def audit_model(model: ModelT, *, entity: str | None = None, ignore: Iterable[str] = ()) -> ModelT:
    """Opt a mapped class in without the mixin; returns the class, so it also decorates."""
    if entity is not None:
        _check_entity(entity, model)
    _registered[model] = _Options(entity, _names(ignore))
    _specs.clear()
    return model


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    """What capture needs of one audited class, worked out once."""

    entity: str
    table: str | None
    columns: tuple[str, ...]  # attribute keys of the mapped columns
    primary_key: tuple[str, ...]  # attribute keys of the primary key columns
    ignore: frozenset[str]  # attribute keys never diffed (the model's own list)


_specs: dict[type, _Spec | None] = {}


def _spec_for(cls: type) -> _Spec | None:
    try:
        return _specs[cls]
    except KeyError:
        spec = _specs[cls] = _make_spec(cls)
        return spec


def _make_spec(cls: type) -> _Spec | None:
    options = next((_registered[base] for base in cls.__mro__ if base in _registered), None)
    if options is None:
        if not issubclass(cls, Audited):
            return None
        options = _Options(cls.__audit_entity__, _names(cls.__audit_ignore__))
    entity = options.entity or _snake_case(cls.__name__)
    _check_entity(entity, cls)
    mapper: Mapper[Any] = inspect(cls)
    table = getattr(mapper.local_table, "name", None)  # a str subclass (quoted_name)
    return _Spec(
        entity=entity,
        table=str(table) if isinstance(table, str) else None,
        columns=tuple(prop.key for prop in mapper.column_attrs),
        primary_key=tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key),
        ignore=options.ignore,
    )


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset((names,) if isinstance(names, str) else names)  # a lone name, not letters


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _check_entity(entity: str, model: type) -> None:
    if not ENTITY_PATTERN.fullmatch(entity):
        raise ConfigError(
            f"the audit entity of {model.__name__} must match {ENTITY_PATTERN.pattern} "
            f"(it makes the action `<entity>.created`), not {entity!r}"
        )


@dataclasses.dataclass(eq=False, slots=True)
class _Row:
    """One row's change in one flush, or (folded) in the whole transaction."""

    transaction: SessionTransaction
    spec: _Spec
    kind: Kind
    identity: tuple[Any, ...]
    old: dict[str, Any]
    new: dict[str, Any]


class ChangeCapture:
    """The session listeners of `capture_changes`; `remove()` detaches them."""

    def __init__(
        self,
        client: AuditClient,
        *,
        target: Any = Session,
        source: str | None = None,
        ignore: Iterable[str] = DEFAULT_IGNORE,
        redact_extra_keys: Iterable[str] = (),
    ) -> None:
        self._client = client
        # Made in async code: a commit in another thread (a sync session in a worker thread)
        # hands its rows to this loop, which the client may not be bound to yet.
        self._loop = _running_loop()
        # An AsyncSession is a facade: its events are those of the Session it wraps.
        self._target = getattr(target, "sync_session", target)
        self._source = source
        self._ignore = _names(ignore)
        self._extra_keys = _names(redact_extra_keys)
        self._hooks: list[tuple[str, Callable[..., None]]] = [
            ("after_flush", self._after_flush),
            ("after_soft_rollback", self._after_soft_rollback),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
        ]
        for name, hook in self._hooks:
            event.listen(self._target, name, hook)

    def remove(self) -> None:
        """Stop capturing; rows still awaiting a commit are dropped with their session."""
        for name, hook in self._hooks:
            event.remove(self._target, name, hook)

    # Session events.

    def _after_flush(self, session: Session, flush_context: object) -> None:
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        rows: list[_Row] | None = session.info.get(PENDING)
        changed: tuple[tuple[Kind, Iterable[object]], ...] = (
            ("created", session.new),
            ("updated", session.dirty),
            ("deleted", session.deleted),
        )
        for kind, objects in changed:
            for obj in objects:
                try:
                    spec = _spec_for(type(obj))
                    row = (
                        None if spec is None else _row(transaction, spec, kind, instance_state(obj))
                    )
                except Exception as exc:
                    _log_failure(f"reading a changed {type(obj).__name__}", exc)
                    continue
                if row is not None:
                    if rows is None:
                        rows = session.info[PENDING] = []
                    rows.append(row)

    def _after_soft_rollback(self, session: Session, previous: SessionTransaction) -> None:
        rows: list[_Row] | None = session.info.get(PENDING)
        if rows:
            # What was flushed inside the transaction rolled back (or a savepoint of it) goes.
            rows[:] = [row for row in rows if not _within(row.transaction, previous)]

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            # The outermost transaction ended without the commit that takes its rows
            # (a rollback, or a close): what it flushed never happened.
            session.info.pop(PENDING, None)

    def _after_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint was released: its rows wait for the outermost commit
        rows: list[_Row] | None = session.info.pop(PENDING, None)
        if not rows:
            return
        # The events are built and handed to the client after the commit returns, on the
        # loop (with the committing code's context): the commit pays for reading its rows only.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = _running_loop()
        try:
            if loop is None:
                self._emit(rows)
            elif _running_loop() is loop:
                loop.call_soon(self._emit, rows)
            else:
                loop.call_soon_threadsafe(self._emit, rows)
        except RuntimeError as exc:  # the loop is closed
            _log_failure("handing the events to the event loop", exc)

    def _emit(self, rows: list[_Row]) -> None:
        try:
            events = self._events(rows)
        except Exception as exc:
            _log_failure("building the events", exc)
            return
        for audit_event in events:
            self._client.capture_nowait(audit_event)  # never raises, never blocks

    def _events(self, rows: list[_Row]) -> list[AuditEvent]:
        operation_id = str(new_event_id())  # links the events of one unit of work
        events = []
        for row in _fold(rows):
            changes = changes_between(
                _plain(row.old),
                _plain(row.new),
                ignore=self._ignore | row.spec.ignore,
                redact_extra_keys=self._extra_keys,
            )
            if row.kind == "updated" and not changes:
                continue  # only ignored columns changed, or back to what they were
            metadata: dict[str, Any] = {"operation_id": operation_id}
            if row.spec.table is not None:
                metadata["table"] = row.spec.table
            events.append(
                AuditEvent(
                    action=f"{row.spec.entity}.{row.kind}",
                    entity=Entity(
                        type=row.spec.entity,
                        id=ID_SEPARATOR.join(str(value) for value in row.identity),
                    ),
                    changes=changes or None,
                    metadata=metadata,
                    source=self._source,
                )
            )
        return events


def capture_changes(
    client: AuditClient,
    *,
    target: Any = Session,
    source: str | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    redact_extra_keys: Iterable[str] = (),
) -> ChangeCapture:
    """Capture the committed changes of audited models through `client`.

    `target` is what the listeners attach to, as SQLAlchemy's session events take it: the
    `Session` class (every session, the default, AsyncSession included), a Session subclass
    (an AsyncSession's `sync_session_class`), a `sessionmaker`, or one session.
    """
    return ChangeCapture(
        client, target=target, source=source, ignore=ignore, redact_extra_keys=redact_extra_keys
    )


def _row(
    transaction: SessionTransaction, spec: _Spec, kind: Kind, state: InstanceState[Any]
) -> _Row | None:
    """Read one flushed object's change from its state, without loading anything."""
    loaded = state.dict
    if kind == "created":
        old: dict[str, Any] = {}
        new = {key: loaded[key] for key in spec.columns if key in loaded}
    elif kind == "deleted":
        # The values the session holds (an expired row is loaded by the delete itself).
        old = {key: loaded[key] for key in spec.columns if key in loaded}
        new = {}
    else:
        # The values before this flush's changes, as attribute history reads them, read
        # directly: a sixth of the cost of `state.attrs[key].history` per column.
        previous = state.committed_state
        old, new = {}, {}
        for key in spec.columns:
            if key in previous:
                value = previous[key]
                # A column set while expired has no known old value: it reads as None.
                old[key] = None if value is NO_VALUE else value
                new[key] = loaded.get(key)
        if not new:
            return None
    identity = state.identity or tuple(loaded.get(key) for key in spec.primary_key)
    if any(value is None for value in identity):
        logger.warning("a %s row without a primary key is not audited", spec.entity)
        return None
    return _Row(transaction, spec, kind, tuple(identity), old, new)


def _fold(rows: list[_Row]) -> list[_Row]:
    """Fold the flushes of one transaction into one change per row, in first-change order."""
    folded: dict[tuple[str, tuple[Any, ...]], _Row] = {}
    for row in rows:
        key = (row.spec.entity, row.identity)
        first = folded.get(key)
        if first is None:
            folded[key] = _Row(
                row.transaction, row.spec, row.kind, row.identity, dict(row.old), dict(row.new)
            )
            continue
        if first.kind != "created":
            for name, value in row.old.items():
                first.old.setdefault(name, value)  # the value before the transaction wins
        if row.kind == "deleted":
            if first.kind == "created":
                del folded[key]  # made and removed again: nothing committed
                continue
            first.kind, first.new = "deleted", {}
        else:
            if first.kind == "deleted":
                first.kind = "updated"  # removed, then made again with the same key
            first.new.update(row.new)
    return list(folded.values())


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Column values as JSON data: a type the encoder does not know is stored as its text."""
    return {
        key: value if type(value) in _JSON_SCALARS else msgspec.to_builtins(value, enc_hook=str)
        for key, value in values.items()
    }


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _log_failure(stage: str, exc: Exception) -> None:
    # Auditing must not break the commit it describes; the failure is said, not raised.
    logger.error(
        "audit change capture failed while %s: %s: %s",
        stage,
        type(exc).__name__,
        redact_sensitive_in_string(str(exc)),
    )
