"""The audit event, wire format v1: types, validation, defaults, encoding."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import operator
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import uuid_utils

from service.errors import InvalidEvent
from service.redaction import (
    REDACTED,
    is_sensitive_key,
    json_precheck,
    may_hold_secret_json,
    redact_sensitive,
    redact_sensitive_in_string,
    redact_strings,
)

ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,7}$"
MAX_EVENT_BYTES = 64 * 1024  # default; Settings.max_event_bytes overrides
MAX_FUTURE_S = 300.0  # seconds a ts may be ahead of the clock; Settings.max_future_s overrides
MAX_NESTING = 64  # levels of lists/objects inside metadata, changes or presentation params

Action = Annotated[str, msgspec.Meta(pattern=ACTION_PATTERN, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Severity = Literal["info", "notice", "warning", "critical"]
Outcome = Literal["success", "failure"]
ActorType = Literal["user", "service", "system", "api_token"]


class _Struct(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    pass


class Actor(_Struct, frozen=True):
    id: Text
    type: ActorType
    name: Text | None = None
    email: Text | None = None


class Entity(_Struct, frozen=True):
    type: Text
    id: Text
    name: Text | None = None


class RequestInfo(_Struct, frozen=True):
    id: Text | None = None
    ip: Text | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    method: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    path: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    duration_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        if self.ip is not None:
            try:
                _parse_ip(self.ip)
            except ValueError:
                raise ValueError(
                    f"`request.ip` must be an IPv4 or IPv6 address, not {self.ip!r}"
                ) from None


# Addresses repeat from event to event, and parsing one was a sixth of a worker's time.
_parse_ip = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


class Change(_Struct, frozen=True):
    field: Text
    old: Any = None
    new: Any = None


class Presentation(_Struct, frozen=True):
    code: Text
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class AuditEvent(_Struct, frozen=True):
    """One audit event; fields are appended with defaults, never reordered or removed."""

    action: Action
    id: uuid.UUID | None = None
    ts: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    category: Text | None = None
    severity: Severity = "info"
    outcome: Outcome = "success"
    actor: Actor | None = None
    entity: Entity | None = None
    tenant: Text | None = None
    request: RequestInfo | None = None
    changes: list[Change] | None = None
    metadata: dict[str, Any] | None = None
    presentation: Presentation | None = None
    source: Text | None = None


# Built once: msgspec encoders and decoders are cheapest reused.
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEvent)
_any_decoder = msgspec.json.Decoder()


def new_event_id() -> uuid.UUID:
    """Make a UUIDv7: time-ordered, so ids index well."""
    return _new_id_and_time()[0]


def _new_id_and_time() -> tuple[uuid.UUID, datetime]:
    """A new UUIDv7 and the time it carries (what _uuid7_time reads back from it)."""
    value = uuid_utils.uuid7().int  # the Rust object's: its compat wrapper costs 3 times more
    ms = value >> 80  # as _uuid7_time reads it: cheaper than asking the Rust object again
    last_ms, last_ts = _last_time
    if ms != last_ms:
        last_ts = datetime.fromtimestamp(ms / 1000, UTC)
        _set_last_time((ms, last_ts))  # a busy producer makes many ids a millisecond
    # As uuid_utils.compat does: the value is a valid UUIDv7 already, so uuid.UUID's own
    # checks are skipped (they cost more than making the id).
    made = _new_object(uuid.UUID)
    _set_attribute(made, "int", value)
    _set_attribute(made, "is_safe", _SAFE_UNKNOWN)
    return made, last_ts


_new_object = object.__new__
_set_attribute = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_last_time: tuple[int, datetime] = (-1, datetime.min.replace(tzinfo=UTC))


def _set_last_time(value: tuple[int, datetime]) -> None:
    global _last_time  # one tuple, replaced whole: safe from any thread
    _last_time = value


def derived_event_id(task_id: str, index: int, enqueued_ms: int) -> uuid.UUID:
    """Make a UUIDv7 for an event sent without id: the same task and index give the same id,
    so a task run twice stores its events once."""
    digest = int.from_bytes(hashlib.sha256(f"{task_id}:{index}".encode()).digest()[:10])
    value = (enqueued_ms & (2**48 - 1)) << 80 | digest
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


PG_INFINITIES = frozenset(
    {datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)}
)  # what asyncpg encodes as -infinity and infinity


def _uuid7_time(event_id: uuid.UUID) -> datetime | None:
    if event_id.version != 7:
        return None
    try:
        return datetime.fromtimestamp((event_id.int >> 80) / 1000, UTC)
    except (OverflowError, ValueError, OSError):  # past year 9999: not a time, just an id
        return None


_CONTAINERS = (dict, list, tuple)
# Values of these exact types nest nothing: told apart by one set lookup, before isinstance
# (a subclass of a container is still walked), as most values are scalars.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _nesting_exceeds(value: object, limit: int) -> bool:
    """Tell whether lists/objects nest deeper than `limit` (walked without recursion)."""
    if type(value) in _SCALARS or not isinstance(value, _CONTAINERS):
        return False
    for child in value.values() if isinstance(value, dict) else value:
        if type(child) not in _SCALARS and isinstance(child, _CONTAINERS):
            break
    else:
        return limit <= 0  # flat, as most are: nothing to walk
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        # Only containers are kept: most values are scalars, and a scalar nests nothing.
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def _check_nesting(event: AuditEvent) -> None:
    # The names are made only for the error: most events pass.
    limit = MAX_NESTING + 1
    name: str | None = None
    if _nesting_exceeds(event.metadata, limit):
        name = "metadata"
    elif event.presentation is not None and _nesting_exceeds(event.presentation.params, limit):
        name = "presentation.params"
    elif event.changes:
        for index, change in enumerate(event.changes):
            if _nesting_exceeds(change.old, limit):
                name = f"changes[{index}].old"
            elif _nesting_exceeds(change.new, limit):
                name = f"changes[{index}].new"
            else:
                continue
            break
    if name is not None:
        raise InvalidEvent(f"`{name}` nests deeper than {MAX_NESTING} levels")


def finalize(
    event: AuditEvent,
    *,
    extra_keys: frozenset[str] = frozenset(),
    max_bytes: int = MAX_EVENT_BYTES,
    default_id: uuid.UUID | None = None,
    default_ts: datetime | None = None,
    max_future_s: float = MAX_FUTURE_S,
    validate: bool = False,
) -> tuple[AuditEvent, bytes]:
    """Fill the defaults, redact secrets and check the size; return the event and its JSON.
    `validate`: also decode the JSON as the worker will (InvalidEvent naming the field); an
    event the redaction changed was decoded by it already, and is not decoded twice."""
    _check_nesting(event)
    category = event.category or event.action.split(".", 1)[0]
    presentation = event.presentation or Presentation(code=f"audit.{event.action}")
    event_id = event.id or default_id
    if event_id is None and event.ts is None:
        # The commonest event: id and ts made here, now; a time of this clock is in range.
        event_id, ts = _new_id_and_time()
    else:
        event_id = event_id or new_event_id()
        ts = _checked_ts(event, event_id, default_ts, max_future_s)
    done = msgspec.structs.replace(
        event,
        id=event_id,
        ts=ts,
        category=category,
        presentation=presentation,
    )
    data = _encoder.encode(done)
    needed, cards = json_precheck(data, extra_keys)  # one scan; most events stop here
    if needed:
        redacted = _redact_encoded(done, data, extra_keys, cards)
        # A changed event was encoded again, then decoded: validated already.
        validate = validate and redacted[1] is data
        done, data = redacted
    if len(data) > max_bytes:
        raise InvalidEvent(
            f"event is {len(data)} bytes encoded, more than the limit of {max_bytes}"
        )
    if validate:
        decode_event(data)
    return done, data


def _checked_ts(
    event: AuditEvent, event_id: uuid.UUID, default_ts: datetime | None, max_future_s: float
) -> datetime:
    # A UUIDv7 carries its capture time: using it makes a redelivered event land on the same
    # (id, ts) key even when its producer sent no ts.
    try:
        ts = (event.ts or _uuid7_time(event_id) or default_ts or datetime.now(UTC)).astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 or 9999 pushed out of range by its offset
        raise InvalidEvent(f"`ts` {event.ts} is out of range once in UTC") from None
    if ts in PG_INFINITIES:
        # asyncpg writes these two instants as PostgreSQL's -infinity / infinity: the stored
        # event would not be the one sent (and would read back without a time zone).
        raise InvalidEvent(f"`ts` {ts.isoformat()} is out of range (the first and last instants)")
    _check_not_ahead(ts, max_future_s)
    return ts


def _check_not_ahead(ts: datetime, max_future_s: float) -> None:
    # A far-future row would sit in the default partition, block its month's partition from
    # being made, and outlive every retention: refused with its reason.
    ahead = (ts - datetime.now(UTC)).total_seconds()
    if ahead > max_future_s:
        raise InvalidEvent(
            f"`ts` {ts.isoformat()} is {ahead:.0f} s ahead of the server clock; at most "
            f"{max_future_s:.0f} s is accepted (AUDITQ_MAX_FUTURE_S)"
        )


def check_complete(
    event: AuditEvent,
    *,
    max_bytes: int = MAX_EVENT_BYTES,
    extra_keys: frozenset[str] = frozenset(),
    max_future_s: float = MAX_FUTURE_S,
) -> AuditEvent:
    """Check an event its producer already completed and redacted (auditq's client) as
    finalize would, without completing it again; raise InvalidEvent. Return it redacted
    with these rules and `extra_keys` (its producer may have had fewer): mostly itself."""
    _check_nesting(event)
    if event.ts is None or event.ts in PG_INFINITIES:
        raise InvalidEvent(f"`ts` {event.ts} is missing or out of range")
    try:
        ts = event.ts.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidEvent(f"`ts` {event.ts} is out of range once in UTC") from None
    _check_not_ahead(ts, max_future_s)
    data = _encoder.encode(event)
    needed, cards = json_precheck(data, extra_keys)
    if needed:
        event, data = _redact_encoded(event, data, extra_keys, cards)
    size = len(data)
    if size > max_bytes:
        raise InvalidEvent(f"event is {size} bytes encoded, more than the limit of {max_bytes}")
    return event


def redact_event(
    event: AuditEvent, extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> AuditEvent:
    """Redact every string of an event (service/redaction.py); the event itself when none
    needed it. Its id, ts, action, enums and request.ip are not free text and stay.
    `cards=False`: the pre-check saw no card number in it (json_precheck).

    The struct's own strings are pre-checked together, in one automaton call; metadata,
    presentation params and changes each by the pre-check of their JSON: only what it lets
    through is walked and has rules run on it."""
    return _redact_encoded(event, b"", extra_keys, cards)[0]


def _redact_encoded(
    event: AuditEvent, data: bytes, extra_keys: frozenset[str], cards: bool
) -> tuple[AuditEvent, bytes]:
    """redact_event, and the event's JSON: `data` when nothing changed, else its new JSON."""
    changes: dict[str, Any] = {}
    _redact_strings(event, extra_keys, changes, cards)
    # The code, redacted above (then in `changes`), and the params, redacted here.
    presentation: Presentation | None = changes.pop("presentation", None) or event.presentation
    if presentation is not None:
        params: Any = presentation.params
        if params and _part_needs_rules(params, extra_keys):
            params = redact_sensitive(params, extra_keys, cards=cards)
        if presentation is not event.presentation or params is not presentation.params:
            changes["presentation"] = Presentation(code=presentation.code, params=params)
    if event.metadata is not None and _part_needs_rules(event.metadata, extra_keys):
        metadata = redact_sensitive(event.metadata, extra_keys, cards=cards)
        if metadata is not event.metadata:
            changes["metadata"] = metadata
    if event.changes and _part_needs_rules(event.changes, extra_keys):
        diffs = [_redact_change(change, extra_keys, cards) for change in event.changes]
        if any(new is not old for new, old in zip(diffs, event.changes, strict=True)):
            changes["changes"] = diffs
    if not changes:
        return event, data
    data = _encoder.encode(msgspec.structs.replace(event, **changes))
    try:
        # Validated again: a redacted value may be longer than the limit of its field.
        return _decoder.decode(data), data
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"once redacted: {exc}") from None


def _part_needs_rules(part: object, extra_keys: frozenset[str]) -> bool:
    """The pre-check of one part of an event, over its JSON (as json_precheck over the whole
    event: what it passes, no rule changes)."""
    return may_hold_secret_json(_encoder.encode(part), extra_keys)


# The struct's free-text strings: (part, its fields); part None is the event itself.
_TEXT_FIELDS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, ("category", "tenant", "source")),
    ("actor", ("id", "name", "email")),
    ("entity", ("type", "id", "name")),
    ("request", ("id", "user_agent", "method", "path")),
    ("presentation", ("code",)),
)
_TEXT_PLACES = tuple((name, field) for name, fields in _TEXT_FIELDS for field in fields)
_TEXT_PARTS = operator.attrgetter(*(name for name, _ in _TEXT_FIELDS if name is not None))


def _getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[object, ...]]:
    """The values of these fields of a struct, as a tuple (attrgetter's of one is none)."""
    get = operator.attrgetter(*fields)
    return get if len(fields) > 1 else lambda part: (get(part),)


# Each part's getter and its values when the part is absent.
_TEXT_OF = tuple((_getter(fields), (None,) * len(fields)) for _, fields in _TEXT_FIELDS)


def _redact_strings(
    event: AuditEvent, extra_keys: frozenset[str], changes: dict[str, Any], cards: bool
) -> None:
    """Redact the struct's free-text strings, after one pre-check over all of them; a
    changed part goes into `changes` under its name."""
    values: list[object] = []
    for part, (fields_of, absent) in zip((event, *_TEXT_PARTS(event)), _TEXT_OF, strict=True):
        values += absent if part is None else fields_of(part)
    # Not text (no value): "", which no rule changes, so that indexes stay places.
    texts = [value if isinstance(value, str) else "" for value in values]
    redacted = redact_strings(texts, extra_keys, cards=cards)
    if redacted is texts:
        return
    done: dict[str | None, dict[str, str]] = {}
    for index, new in enumerate(redacted):
        if new is not texts[index]:
            name, field = _TEXT_PLACES[index]
            done.setdefault(name, {})[field] = new
    for name, fields in done.items():
        if name is None:
            changes.update(fields)
        else:
            changes[name] = msgspec.structs.replace(getattr(event, name), **fields)


def _redact_change(change: Change, extra_keys: frozenset[str], cards: bool = True) -> Change:
    """A change whose field names a secret loses both values; others lose their credentials."""
    if is_sensitive_key(change.field, extra_keys):
        # No value stays no value: that a secret was set (or removed) is not a secret.
        masked_old = None if change.old is None else REDACTED
        masked_new = None if change.new is None else REDACTED
        if change.old == masked_old and change.new == masked_new:
            return change
        return Change(field=change.field, old=masked_old, new=masked_new)
    field = redact_sensitive_in_string(change.field, extra_keys, cards=cards)
    old = redact_sensitive(change.old, extra_keys, cards=cards)
    new = redact_sensitive(change.new, extra_keys, cards=cards)
    if field is change.field and old is change.old and new is change.new:
        return change
    return Change(field=field, old=old, new=new)


def encode(value: object) -> bytes:
    """Encode events (or lists of them) as JSON."""
    return _encoder.encode(value)


def decode_event(data: bytes | str) -> AuditEvent:
    """Decode and validate one event from JSON; raise InvalidEvent naming the field."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}") from None
    except UnicodeError:  # bytes not UTF-8 inside a string, or a str with a lone surrogate
        raise InvalidEvent("invalid JSON: the text is not valid UTF-8") from None
    except RecursionError:  # msgspec's answer to hostile nesting
        raise InvalidEvent("invalid JSON: nested too deeply") from None


def decode_json(data: bytes | str) -> Any:
    """Decode any JSON value; raise InvalidEvent for malformed JSON."""
    try:
        return _any_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}") from None
    except UnicodeError:
        raise InvalidEvent("invalid JSON: the text is not valid UTF-8") from None
    except RecursionError:
        raise InvalidEvent("invalid JSON: nested too deeply") from None


def convert_event(data: Any) -> AuditEvent:
    """Validate one event given as plain data; raise InvalidEvent naming the field."""
    try:
        return msgspec.convert(data, AuditEvent)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc)) from None
