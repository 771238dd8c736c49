"""Property tests (hypothesis): decoders, redaction and cursors hold for any input.

- Any bytes or text into the event decoder or the worker's payload parsing give events or
  InvalidEvent, never another exception.
- A secret planted under any sensitive key (any casing, any separator, any depth) or in any
  error-string shape never survives redaction.
- Audit-log cursors round-trip, and any tampering is the 400 path, never another exception.

Runs are derandomized with bounded examples, so they are reproducible and quick.
"""

from __future__ import annotations

import base64
import json
import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.audit_logs.cursor import CursorCodec, Position
from service.api.errors import ApiError
from service.errors import InvalidEvent
from service.events import AuditEvent, decode_event, finalize
from service.ops.task_cursor import decode_cursor
from service.ops.task_model import InvalidCursor
from service.ops.task_views import count_events, redacted_payload
from service.redaction import REDACTED, redact_sensitive, redact_sensitive_in_string
from service.settings import Settings
from workers.job import _parse
from workers.state import Task, WorkerState

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON-like values, for noise and for event fields.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

# Event-shaped JSON: the real field names with values that are right, nearly right or wrong.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "action": st.sampled_from(["auth.login", "a.b", "Auth.Login", "x", "a." * 70 + "b", ""])
    | st.text(max_size=12),
    "id": st.uuids().map(str) | st.sampled_from(["ffffffff-ffff-7fff-bfff-ffffffffffff", "x"]),
    "ts": st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.timezones()
    ).map(lambda d: d.isoformat())
    | st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2024-02-30T00:00:00Z"]
    ),
    "severity": st.sampled_from(["info", "notice", "warning", "critical", "fatal"]),
    "outcome": st.sampled_from(["success", "failure", "maybe"]),
    "actor": st.fixed_dictionaries(
        {"id": st.text(max_size=8), "type": st.sampled_from(["user", "service", "robot"])}
    )
    | json_values,
    "entity": st.fixed_dictionaries({"type": st.text(max_size=8), "id": st.text(max_size=8)})
    | json_values,
    "request": st.fixed_dictionaries(
        {},
        optional={
            "ip": st.ip_addresses().map(str) | st.text(max_size=20),
            "status": st.integers(min_value=-5, max_value=1000),
            "duration_ms": st.floats(allow_nan=False) | st.integers(),
        },
    )
    | json_values,
    "changes": st.lists(
        st.fixed_dictionaries({"field": st.text(max_size=8)}, optional={"old": json_values}),
        max_size=3,
    )
    | json_values,
    "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
    "presentation": st.fixed_dictionaries({"code": st.text(max_size=8)}) | json_values,
    "tenant": st.text(max_size=1100) | json_values,
    "source": st.text(max_size=12) | json_values,
    "unknown_field": json_values,
}
event_like = st.fixed_dictionaries(
    {"action": FIELD_VALUES["action"]},
    optional={name: value for name, value in FIELD_VALUES.items() if name != "action"},
)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# Bytes that are often near-JSON: mutations of encoded events, raw bytes, odd escapes.
def _mutate(data: bytes, position: int, replacement: bytes) -> bytes:
    position %= len(data) + 1
    return data[:position] + replacement + data[position + 1 :]


raw_payloads = (
    st.binary(max_size=300)
    | event_like.map(_encode)
    | st.lists(event_like, max_size=4).map(_encode)
    | st.builds(
        _mutate,
        event_like.map(_encode),
        st.integers(min_value=0),
        st.binary(max_size=3) | st.sampled_from([b"\\ud800", b"\xff", b"\x00", b"]", b"{"]),
    )
)


def _task() -> Task:
    return Task(id="1735689600000-7", enqueued_ms=1_735_689_600_000, job_try=1)


_STATE = WorkerState(Settings())


@FUZZ
@given(raw_payloads)
def test_any_bytes_decode_to_an_event_or_invalid_event(data: bytes) -> None:
    try:
        event = decode_event(data)
    except InvalidEvent:
        return
    assert isinstance(event, AuditEvent)
    # A decoded event is finished (defaults, redaction) or refused, nothing else.
    try:
        finalize(event)
    except InvalidEvent:
        pass


@FUZZ
@given(st.text(max_size=200) | raw_payloads.map(lambda b: b.decode("utf-8", "replace")))
def test_any_text_decodes_to_an_event_or_invalid_event(text: str) -> None:
    try:
        decode_event(text)
    except InvalidEvent:
        pass


@FUZZ
@given(st.text(max_size=200) | raw_payloads.map(lambda b: b.decode("utf-8", "replace")))
def test_worker_payload_parsing_gives_events_or_rejections(payload: str) -> None:
    try:
        events, rejected = _parse(payload, _task(), _STATE)
    except InvalidEvent:
        return  # not JSON: the whole task is dead-lettered with this reason
    for event in events:
        assert event.id is not None and event.ts is not None and event.ts.tzinfo is not None
    assert sorted(r.index for r in rejected) == [r.index for r in rejected]
    assert len({r.index for r in rejected}) == len(rejected)
    assert all(isinstance(r.reason, str) and r.reason for r in rejected)


def test_out_of_range_times_are_rejected_or_ignored_not_raised() -> None:
    # Found by the fuzzing above: these raised OverflowError/ValueError out of finalize,
    # failing the worker's whole batch (and a 500 on HTTP ingest).
    far_uuid7 = decode_event(b'{"action": "a.b", "id": "ffffffff-ffff-7fff-bfff-ffffffffffff"}')
    done, _ = finalize(far_uuid7, default_ts=datetime(2025, 1, 1, tzinfo=UTC))
    assert done.ts == datetime(2025, 1, 1, tzinfo=UTC)
    for ts in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        event = decode_event(_encode({"action": "a.b", "ts": ts}))
        with pytest.raises(InvalidEvent, match="ts"):
            finalize(event)
    events, rejected = _parse(
        json.dumps([{"action": "a.b", "ts": "0001-01-01T00:00:00+01:00"}, {"action": "a.c"}]),
        _task(),
        _STATE,
    )
    assert [e.action for e in events] == ["a.c"] and [r.index for r in rejected] == [0]


@pytest.mark.parametrize(
    "data",
    [
        '{"action": "a.b", "source": "\ud800"}',  # a str with a lone surrogate
        b'{"action": "a.\x80"}',  # bytes not UTF-8 inside a string: UnicodeDecodeError
        b'{"\xff": 1}',
    ],
)
def test_text_that_is_not_utf8_is_invalid_event(data: str | bytes) -> None:
    with pytest.raises(InvalidEvent, match="UTF-8"):
        decode_event(data)


# Redaction.

# Sensitive keys as words, joined with any separator and cased at random below.
SENSITIVE_WORDS = [
    ["password"],
    ["passwd"],
    ["secret"],
    ["token"],
    ["access", "token"],
    ["refresh", "token"],
    ["api", "key"],
    ["apikey"],
    ["x", "api", "key"],
    ["authorization"],
    ["proxy", "authorization"],
    ["cookie"],
    ["set", "cookie"],
    ["private", "key"],
    ["client", "secret"],
    ["credentials"],
    ["db", "password"],
    ["two", "factor", "secret"],
    ["two", "factor", "backup", "codes"],
    ["2fa", "secret"],
    ["backup", "codes"],
    ["recovery", "codes"],
    ["totp", "secret"],
    ["github", "token"],
]
SEPARATORS = ["", "_", "-", "."]


@st.composite
def sensitive_keys(draw: st.DrawFn) -> str:
    words = draw(st.sampled_from(SENSITIVE_WORDS))
    key = draw(st.sampled_from(SEPARATORS)).join(words)
    casing = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    return "".join(ch.upper() if up else ch for ch, up in zip(key, casing, strict=True))


# A secret looks like a real credential: it carries a digit, and is distinctive enough that
# finding it in the output means it leaked.
SECRET_CHARS = string.ascii_letters + string.digits + "-_.~+"
secrets_ = st.text(SECRET_CHARS, min_size=10, max_size=40).map(lambda s: "Zq9" + s)


@st.composite
def buried(draw: st.DrawFn, value: Any) -> Any:
    """Put `value` at a random depth of dicts and lists, among harmless siblings."""
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        if draw(st.booleans()):
            siblings = draw(st.dictionaries(st.sampled_from(["a", "b", "note"]), json_scalars))
            value = {**siblings, draw(st.sampled_from(["data", "inner", "x"])): value}
        else:
            before = draw(st.lists(json_scalars, max_size=2))
            value = [*before, value]
    return value


def _sensitive_value(secret: str) -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [
            secret,
            [secret, {"inner": secret}],
            {"nested": secret},
            f"prefix {secret}",
        ]
    )


@FUZZ
@given(st.data(), sensitive_keys(), secrets_)
def test_secret_under_sensitive_key_never_survives_at_any_depth(
    data: st.DataObject, key: str, secret: str
) -> None:
    planted = data.draw(_sensitive_value(secret))
    shape = data.draw(
        st.sampled_from(["mapping", "diff"]), label="shape"
    )  # a key, or a change diff naming it
    leaf: Any = (
        {key: planted} if shape == "mapping" else {"field": key, "old": planted, "new": planted}
    )
    value = data.draw(buried(leaf))
    out = redact_sensitive(value)
    assert secret not in json.dumps(out), (key, value, out)
    assert redact_sensitive(out) == out


@FUZZ
@given(st.data(), sensitive_keys(), secrets_)
def test_secret_in_an_event_never_leaves_the_producer(
    data: st.DataObject, key: str, secret: str
) -> None:
    metadata = data.draw(buried({key: secret}))
    event = msgspec.convert(
        {
            "action": "config.updated",
            "metadata": {"m": metadata},
            "changes": [{"field": key, "old": secret, "new": secret}],
        },
        AuditEvent,
    )
    _, encoded = finalize(event)
    assert secret.encode() not in encoded


def _string_shapes(key: str, secret: str) -> list[str]:
    basic = base64.b64encode(f"admin:{secret}".encode()).decode()
    pair = json.dumps({key: secret})
    return [
        pair,  # a JSON pair
        json.dumps({"detail": pair}),  # JSON inside JSON
        repr({key: secret}),  # a Python repr in an exception message
        repr({"headers": {"Authorization": f"Bearer {secret}", "Accept": "*/*"}}),
        f"Cookie: theme=dark; sid={secret}",
        f"Set-Cookie: sid={secret}; Path=/; HttpOnly",
        f"X-Api-Key: {secret}",
        f"{key}={secret}",
        f"{key} = {secret}",
        f"{key}: {secret}",
        f"{key}:{secret}",
        f"{key}='{secret}'",
        f'{key}="{secret}"',
        f"GET /cb?state=1&{key}={secret}&n=2",
        f"https://host/cb?{key}={secret}",
        f"Authorization: Bearer {secret}",
        f"authorization: basic {basic}",
        f"Bearer {secret}",
        f"Basic {basic}",
        f"redis://default:{secret}@cache:6379/0",
        f"postgresql://:{secret}@db.internal/auditq",
        f"amqps://user.name:{secret}@mq/vhost?heartbeat=5",
    ]


prose = st.text(string.ascii_letters + string.digits + " ", max_size=20)
# Whatever precedes the shape ends a word: "xBearer …" is no auth header.
openers = st.sampled_from([" ", "\n", ", ", "; ", "(", "[", "error: ", "failed: "])
closers = st.sampled_from(["", " ", "\n", ", ", "; ", ")", "]", " and more"])


@FUZZ
@given(st.data(), sensitive_keys(), secrets_)
def test_secret_in_any_error_string_shape_never_survives(
    data: st.DataObject, key: str, secret: str
) -> None:
    shape = data.draw(st.sampled_from(_string_shapes(key, secret)), label="shape")
    text = data.draw(prose) + data.draw(openers) + shape + data.draw(closers) + data.draw(prose)
    out = redact_sensitive_in_string(text)
    assert secret not in out, (text, out)
    assert REDACTED in out
    assert redact_sensitive_in_string(out) == out
    # The same message in a structure (an error body, a dead letter) is redacted too.
    assert secret not in json.dumps(redact_sensitive({"error": {"message": text}}))


@FUZZ
@given(st.text(max_size=300))
def test_string_redaction_never_raises_and_is_idempotent(text: str) -> None:
    once = redact_sensitive_in_string(text)
    assert redact_sensitive_in_string(once) == once


# Cursors of the audit-log API.

CODEC = CursorCodec(b"k" * 32)
positions = st.builds(
    Position,
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
    ),
    st.uuids(),
    st.sampled_from(["asc", "desc", "live"]),
)


@FUZZ
@given(positions)
def test_cursor_round_trips(position: Position) -> None:
    assert CODEC.decode(CODEC.encode(position), order=position.order) == position


def _decode_or_400(token: str, order: str) -> Position | None:
    try:
        return CODEC.decode(token, order=order)
    except ApiError as exc:
        assert exc.status == 400 and "cursor" in exc.message
        return None


@FUZZ
@given(positions, st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_byte_flip_of_a_cursor_is_refused(position: Position, index: int, bit: int) -> None:
    token = CODEC.encode(position).encode()
    index %= len(token)
    flipped = bytearray(token)
    flipped[index] ^= 1 << bit
    decoded = _decode_or_400(flipped.decode("latin-1"), position.order)
    # Only a flip of base64 padding bits decodes to the same bytes; never to another position.
    assert decoded is None or decoded == position


@FUZZ
@given(positions, st.integers(min_value=0), st.text(max_size=3))
def test_any_edit_of_a_cursor_is_refused(position: Position, index: int, edit: str) -> None:
    token = CODEC.encode(position)
    index %= len(token) + 1
    edited = token[:index] + edit + token[index + 1 :]
    decoded = _decode_or_400(edited, position.order)
    assert decoded is None or decoded == position


@FUZZ
@given(
    st.text(max_size=120)
    | st.binary(max_size=90).map(lambda b: base64.urlsafe_b64encode(b).decode())
)
def test_any_string_as_a_cursor_is_refused(token: str) -> None:
    assert _decode_or_400(token, "desc") is None


@FUZZ
@given(positions, st.sampled_from(["asc", "desc", "live"]))
def test_a_cursor_of_another_key_or_order_is_refused(position: Position, order: str) -> None:
    other = CursorCodec(b"another secret").encode(position)
    assert _decode_or_400(other, position.order) is None
    if order != position.order:
        assert _decode_or_400(CODEC.encode(position), order) is None


def test_a_forged_cursor_with_a_valid_shape_is_refused() -> None:
    position = Position(datetime.now(UTC) - timedelta(days=1), uuid.uuid4(), "desc")
    body, _, signature = CODEC.encode(position).partition(".")
    forged = Position(datetime.now(UTC), uuid.uuid4(), "desc")
    payload = base64.urlsafe_b64encode(msgspec.json.encode(forged)).rstrip(b"=").decode()
    assert payload != body
    assert _decode_or_400(f"{payload}.{signature}", "desc") is None


@FUZZ
@given(
    st.text(max_size=120)
    | st.binary(max_size=90).map(lambda b: base64.urlsafe_b64encode(b).decode())
)
def test_any_string_as_a_task_cursor_is_invalid_cursor(token: str) -> None:
    try:
        decode_cursor(token)
    except InvalidCursor:
        pass


# Hostile nesting: msgspec answers with RecursionError, and recursive code would too.


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("depth", [10, 64, 65, 300, 900, 5_000, 100_000])
def test_any_nesting_is_an_event_or_invalid_event(depth: int, kind: str) -> None:
    event = '{"action": "a.b", "metadata": {"x": ' + _nested(depth, kind) + "}}"
    for payload in (event, f'[{event}, {{"action": "a.c"}}]', _nested(depth, kind)):
        try:
            decoded = decode_event(payload)
            finalize(decoded)
        except InvalidEvent:
            pass
        try:
            events, rejected = _parse(payload, _task(), _STATE)
        except InvalidEvent:
            continue
        assert all(e.action == "a.c" or depth <= 64 for e in events)
        assert all("nests deeper" in r.reason or "invalid event" in r.reason for r in rejected)
        # A rejected event goes to the dead letter redacted: redaction must hold too.
        for r in rejected:
            json.dumps(redact_sensitive(msgspec.to_builtins(r.event)))
    assert count_events(event) in (0, 1)
    json.dumps(redacted_payload(event))


def test_redaction_replaces_what_nests_too_deep() -> None:
    value: Any = {"password": "x"}
    for _ in range(5_000):
        value = {"a": [value]}
    out = json.dumps(redact_sensitive(value))
    assert '"x"' not in out and REDACTED in out
