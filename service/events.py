"""The audit event, wire format v1: types, validation, defaults, encoding."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import uuid_utils

from service.errors import InvalidEvent
from service.redaction import (
    REDACTED,
    JsonMatches,
    is_sensitive_key,
    json_matches,
    keywords_need_rules,
    may_hold_secret_json,
    redact_escapes,
    redact_escapes_as_written,
    redact_keys_holding,
    redact_matched,
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
    event the redaction changed was decoded by it already, and is not decoded twice.
    Without it the event is taken as valid (the API and the worker decoded it): of an event
    the redaction changed, the fields it changed are checked again."""
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
    found = json_matches(data, extra_keys)  # one scan; most events stop here
    if found is not None:
        redacted = _redact_encoded(done, data, extra_keys, found, found.cards, validate=validate)
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
    found = json_matches(data, extra_keys)
    if found is not None:
        event, data = _redact_encoded(event, data, extra_keys, found, found.cards)
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

    One pre-check over the event's JSON tells where rules may act: only the text fields
    and the parts (metadata, changes, presentation params) it matched in are walked."""
    data = _encoder.encode(event)
    found = json_matches(data, extra_keys, whole=False)
    if found is None:
        return event
    # The card rule runs as asked, not as the scan saw: another rule's redaction can leave
    # a card number where the scan saw none ("-----END … KEY-----3782…" -> "[REDACTED]3782…").
    return _redact_encoded(event, data, extra_keys, found, cards)[0]


def _redact_encoded(
    event: AuditEvent,
    data: bytes,
    extra_keys: frozenset[str],
    found: JsonMatches,
    cards: bool,
    *,
    validate: bool = False,
) -> tuple[AuditEvent, bytes]:
    """redact_event (`cards`: whether the card rule runs), and the event's JSON: `data` when
    nothing changed, else its new JSON (decoded again with `validate`, which validates it;
    else only the fields the redaction changed are checked: the event is otherwise valid, as
    the API and the worker have it)."""
    places, parts = _where_matched(event, data, found)
    # A mark: a string may hold escapes as written (JSON written by hand inside it), which
    # are read too; without one no string holds a backslash, and nothing more is done.
    escapes = found.marks
    changes: dict[str, Any] = {}
    changed = _redact_strings(event, places, extra_keys, changes, cards, escapes)
    # The code, redacted above (then in `changes`), and the params, redacted here.
    presentation: Presentation | None = changes.pop("presentation", None) or event.presentation
    if presentation is not None:
        params: Any = presentation.params
        if params and _part_needs_rules(params, "params", parts, data, extra_keys):
            params = _redact_part(params, "params", parts, extra_keys, cards)
            params = redact_escapes(params, extra_keys) if escapes else params
        if presentation is not event.presentation or params is not presentation.params:
            changes["presentation"] = Presentation(code=presentation.code, params=params)
    metadata: object = event.metadata
    if metadata is not None and _part_needs_rules(metadata, "metadata", parts, data, extra_keys):
        metadata = _redact_part(metadata, "metadata", parts, extra_keys, cards)
        metadata = redact_escapes(metadata, extra_keys) if escapes else metadata
        if metadata is not event.metadata:
            changes["metadata"] = metadata
    if event.changes and _part_needs_rules(event.changes, "changes", parts, data, extra_keys):
        diffs = [_redact_change(change, extra_keys, cards, escapes) for change in event.changes]
        if any(new is not old for new, old in zip(diffs, event.changes, strict=True)):
            changes["changes"] = diffs
            changed.append(_DIFF_FIELDS)
    if not changes:
        return event, data
    redacted = msgspec.structs.replace(event, **changes)
    data = _encoder.encode(redacted)
    if validate:
        try:
            # Decoded to validate only, as an unchanged event is: the event kept is the
            # redacted one, which shares every part the redaction left with the caller's
            # (a decoded copy kept in a client's buffer is that much more for the GC).
            _decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"once redacted: {exc}") from None
    else:
        # A redacted value may be longer than the limit of its field.
        _check_limits(redacted, changed)
    return redacted, data


def _redact_part(
    part: object, name: str, parts: dict[str, _Part] | None, extra_keys: frozenset[str], cards: bool
) -> Any:
    """redact_sensitive of a part (params, metadata); only its keys' rules when every match
    the scan found inside it lies in its own keys (redact_keys_holding)."""
    matched = None if parts is None else parts.get(name)
    if matched is not None and matched[3] > 0:
        done = redact_keys_holding(part, matched[3], extra_keys, cards=cards)
        if done is not None:
            return done
    return redact_sensitive(part, extra_keys, cards=cards)


def _part_needs_rules(
    part: object, name: str, parts: dict[str, _Part] | None, data: bytes, extra_keys: frozenset[str]
) -> bool:
    """The pre-check of one part of an event, as its own scan would say: a stem or card
    shape inside it, or keywords whose token rules match its JSON."""
    if parts is None:  # where the first scan matched is not known: this part's own scan
        return may_hold_secret_json(_encoder.encode(part), extra_keys)
    matched = parts.get(name)
    if matched is None:
        return False
    start, end, strong, _ = matched
    return strong or keywords_need_rules(data[start:end])


# Where each part of an encoded event is, found from the layout msgspec gives it: a
# struct's fields in their order, a quote inside a string escaped. `"name":` with a name's
# own characters is then always a key, and up to `request` the event holds no free-form
# object: there such a key is the event's or one of its structs'. Past it (changes,
# metadata, presentation, source) any key may be, and each part is measured by its length.
_TAIL_KEYS = {
    name: f',"{name}":'.encode() for name in ("changes", "metadata", "presentation", "source")
}
# The keys of the text fields up to `request`, and their struct ("": the key is a field of
# several, the last struct opened before it says whose).
_HEAD_KEYS: dict[bytes, str | None] = {
    b"category": None,
    b"tenant": None,
    b"email": "actor",
    b"user_agent": "request",
    b"method": "request",
    b"path": "request",
    b"id": "",
    b"name": "",
    b"type": "",
}
_STRUCT_KEYS = tuple((f'"{name}":{{'.encode(), name) for name in ("actor", "entity", "request"))
# A part with a match inside: its value's span in the JSON, whether a stem or a card shape
# matched there (else keywords only), and how many matches lie all inside it (-1: not known).
_Part = tuple[int, int, bool, int]
_Place = tuple[str | None, str]  # a text field: its struct (None: the event's own), its name


def _where_matched(
    event: AuditEvent, data: bytes, found: JsonMatches
) -> tuple[set[_Place] | None, dict[str, _Part] | None]:
    """The text fields in which the pre-check matched, and the parts (changes, metadata,
    params) with a match inside them. A text field a match only reaches into counts (a
    needless run of the rules at worst); a part counts as its own pre-check would have it,
    with a match all inside. None for the text fields: each must be pre-checked as text (a
    mark, see _TEXT_ONLY_MARKS); None for both: where the scan matched is not known."""
    if found.marks:  # every text field pre-checked as text, every part walked string by string
        return None, _EVERY_PART
    spans = found.spans
    if spans is None:
        return None, None
    places: set[_Place] = set()
    parts: dict[str, _Part] = {}
    head_end = _head_end(event, data)
    tail: list[tuple[str, int, int]] | None = None
    last_key = -1  # where the last `":` before the previous match in the head is
    for start, end, strong in spans:
        if end <= head_end:
            # Matches come in order: one with no `":` since the previous one is in its field.
            key = data.rfind(b'":', 0, end)
            if key != last_key:
                last_key = key
                place = _head_field(data, end)
                if place is not None:
                    places.add(place)
            continue
        if tail is None:
            tail = _tail_spans(event, data, head_end)
        for name, low, high in tail:
            if low < end <= high:  # the match ends in it (the spans are apart)
                place = _TAIL_PLACES.get(name)
                if place is not None:
                    places.add(place)
                elif low <= start:  # a part: the match all inside
                    had = parts.get(name)
                    parts[name] = (
                        (low, high, strong, 1)
                        if had is None
                        else (low, high, strong or had[2], had[3] + 1)
                    )
                break
    return places, parts


# A mark (a tab, a backslash, a character whose lowercase changes its length) can hide a name
# from the JSON scan that the text's pre-check sees: each part is walked, its strings
# pre-checked one by one as text.
_EVERY_PART: dict[str, _Part] = {
    name: (0, 0, True, -1) for name in ("params", "metadata", "changes")
}


def _head_end(event: AuditEvent, data: bytes) -> int:
    """Where the first of changes, metadata, presentation and source starts: its key's
    first occurrence (no field before it holds a free-form object)."""
    for name, key in _TAIL_KEYS.items():
        if getattr(event, name) is not None:
            return data.find(key)
    return len(data)


def _head_field(data: bytes, end: int) -> _Place | None:
    """The text field up to `request` that holds a match ending at `end`: the field of the
    last key before it (None: no text field)."""
    at = end
    while (at := data.rfind(b'":', 0, at)) > 0:
        quote = data.rfind(b'"', 0, at)
        name = data[quote + 1 : at]
        # A key opens an object or follows a comma (a quote inside a string is escaped).
        if name in _HEAD_KEYS and data[quote - 1] in b"{,":
            break
    else:
        return None
    place = _HEAD_PLACES.get(name)
    if place is not None:
        return place
    if _HEAD_KEYS[name] != "":
        return None  # a key of no text field
    opened = max((data.rfind(key, 0, quote), struct) for key, struct in _STRUCT_KEYS)
    place = (opened[1] if opened[0] >= 0 else None, name.decode())  # none opened: the event's
    return place if place in _TEXT_PLACE_SET else None


def _tail_spans(event: AuditEvent, data: bytes, head_end: int) -> list[tuple[str, int, int]]:
    """The spans in `data` of the values of changes, metadata, presentation's code and
    params, and source, by name: measured from the event's end and from the head's."""
    spans: list[tuple[str, int, int]] = []
    end = len(data) - 1  # the event's closing brace
    if event.source is not None:
        # A string, last: no key of the event's layout after its own (cheaper than a length).
        if isinstance(event.source, str):
            start = data.rfind(_TAIL_KEYS["source"]) + len(_TAIL_KEYS["source"])
        else:
            start = end - len(_encoder.encode(event.source))
        spans.append(("source", start, end))
        end = start - len(_TAIL_KEYS["source"])
    presentation = event.presentation
    if presentation is not None:
        if not presentation.params and isinstance(presentation.code, str):  # as for source
            start = data.rfind(_TAIL_KEYS["presentation"], 0, end) + len(_TAIL_KEYS["presentation"])
        else:
            start = end - len(_encoder.encode(presentation))  # {"code":…,"params":…}
        code = start + len(b'{"code":')
        if presentation.params:  # they follow the code, up to the closing brace
            code_end = code + len(_encoder.encode(presentation.code))
            spans.append(("params", code_end + len(b',"params":'), end - 1))
        else:
            code_end = end - 1
        spans.append(("presentation.code", code, code_end))
        end = start - len(_TAIL_KEYS["presentation"])
    at = head_end
    if event.changes is not None:
        at += len(_TAIL_KEYS["changes"])
        # Their length is needed only to tell where metadata starts.
        changes_end = end if event.metadata is None else at + len(_encoder.encode(event.changes))
        spans.append(("changes", at, changes_end))
        at = changes_end
    if event.metadata is not None:
        spans.append(("metadata", at + len(_TAIL_KEYS["metadata"]), end))
    return spans


# The struct's free-text strings, in the order of the JSON.
_TEXT_PLACES: tuple[_Place, ...] = (
    (None, "category"),
    *(("actor", field) for field in ("id", "name", "email")),
    *(("entity", field) for field in ("type", "id", "name")),
    (None, "tenant"),
    *(("request", field) for field in ("id", "user_agent", "method", "path")),
    ("presentation", "code"),
    (None, "source"),
)
_TEXT_PLACE_SET = frozenset(_TEXT_PLACES)
# The text field of each key of _HEAD_KEYS whose struct is known.
_HEAD_PLACES: dict[bytes, _Place] = {
    name: (part, name.decode())
    for name, part in _HEAD_KEYS.items()
    if part != "" and (part, name.decode()) in _TEXT_PLACE_SET
}
_TAIL_PLACES: dict[str, _Place] = {
    "presentation.code": ("presentation", "code"),
    "source": (None, "source"),
}
_DIFF_FIELDS: _Place = ("changes", "field")  # every change's field, in `changed`
# Where each field whose length is limited comes in the JSON: changes after request.
_JSON_ORDER = {
    place: index
    for index, place in enumerate((*_TEXT_PLACES[:-2], _DIFF_FIELDS, *_TEXT_PLACES[-2:]))
}


def _redact_strings(
    event: AuditEvent,
    places: set[_Place] | None,
    extra_keys: frozenset[str],
    changes: dict[str, Any],
    cards: bool,
    escapes: bool = False,
) -> list[_Place]:
    """Redact the struct's free-text strings at `places`, in which the pre-check of the
    event's JSON matched (None: every one, after one pre-check over all of them as text;
    `escapes`: and what the escapes of each spell, read too); a changed part goes into
    `changes` under its name. Return the changed fields."""
    if places is None:
        texts = [_text_at(event, place) for place in _TEXT_PLACES]
        redacted = redact_strings(texts, extra_keys, cards=cards)
        if escapes:
            redacted = [
                redact_escapes_as_written(text, extra_keys) if "\\" in text else text
                for text in redacted
            ]
        found = [
            (place, new)
            for place, old, new in zip(_TEXT_PLACES, texts, redacted, strict=True)
            if new is not old
        ]
    else:  # the scan matched in each: the rules at once
        found = []
        for place in sorted(places, key=_JSON_ORDER.__getitem__) if len(places) > 1 else places:
            text = _text_at(event, place)
            if text and (new := redact_matched(text, extra_keys, cards=cards)) is not text:
                found.append((place, new))
    if not found:
        return []
    done: dict[str | None, dict[str, str]] = {}
    for (name, field), new in found:
        done.setdefault(name, {})[field] = new
    for name, fields in done.items():
        if name is None:
            changes.update(fields)
        else:
            changes[name] = msgspec.structs.replace(getattr(event, name), **fields)
    return [place for place, _ in found]


def _text_at(event: AuditEvent, place: _Place) -> str:
    """The text field at `place` ("" when it holds no text, which no rule changes)."""
    name, field = place
    part = event if name is None else getattr(event, name)
    value = None if part is None else getattr(part, field)
    return value if isinstance(value, str) else ""


def _check_limits(event: AuditEvent, changed: list[_Place]) -> None:
    """Refuse, as decoding would, a changed text field longer than its limit (the first in
    the order of the JSON is named)."""
    for place in sorted(changed, key=_JSON_ORDER.__getitem__) if len(changed) > 1 else changed:
        name, field = place
        limit = _MAX_LENGTHS[place]
        if place == _DIFF_FIELDS:
            assert event.changes is not None
            for index, change in enumerate(event.changes):
                if _too_long(change.field, limit):
                    _refuse(limit, f"changes[{index}].field")
        else:
            part = event if name is None else getattr(event, name)
            if _too_long(getattr(part, field), limit):
                _refuse(limit, field if name is None else f"{name}.{field}")


def _too_long(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) > limit


def _refuse(limit: int, path: str) -> None:
    raise InvalidEvent(f"once redacted: Expected `str` of length <= {limit} - at `$.{path}`")


def _max_lengths() -> dict[_Place, int]:
    """The longest each text field may be, read from the structs' types."""
    structs = {None: AuditEvent, "actor": Actor, "entity": Entity, "request": RequestInfo}
    structs |= {"presentation": Presentation, "changes": Change}
    limits: dict[_Place, int] = {}
    for name, struct in structs.items():
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            for kind in getattr(field.type, "types", (field.type,)):
                if isinstance(kind, msgspec.inspect.StrType) and kind.max_length is not None:
                    limits[(name, field.name)] = kind.max_length
    return limits


_MAX_LENGTHS = _max_lengths()


def _redact_change(
    change: Change, extra_keys: frozenset[str], cards: bool = True, escapes: bool = False
) -> Change:
    """A change whose field names a secret loses both values; others lose their credentials."""
    if is_sensitive_key(change.field, extra_keys):
        # No value stays no value: that a secret was set (or removed) is not a secret.
        masked_old = None if change.old is None else REDACTED
        masked_new = None if change.new is None else REDACTED
        field = change.field
        if "\\" in field:  # sensitive maybe only read unescaped: its text may hold a secret
            field = redact_sensitive_in_string(field, extra_keys, cards=cards)
        if field is change.field and change.old == masked_old and change.new == masked_new:
            return change
        return Change(field=field, old=masked_old, new=masked_new)
    field = redact_sensitive_in_string(change.field, extra_keys, cards=cards)
    old = redact_sensitive(change.old, extra_keys, cards=cards)
    new = redact_sensitive(change.new, extra_keys, cards=cards)
    if escapes:  # the event's JSON holds a mark: escapes as written are read too
        old, new = redact_escapes(old, extra_keys), redact_escapes(new, extra_keys)
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
