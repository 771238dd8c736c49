"""Typed input at the edge: a query string or JSON data read as a msgspec Struct, and the one
translation of msgspec's complaint into a 400 that names the field.

The Struct is the declaration: its fields' types and `msgspec.Meta` bounds validate the input
and make the OpenAPI document (service/api/openapi.py), a field whose type admits a list is
repeatable in a query string, and a `TextForm` in a field's annotation says how a value the
JSON types cannot describe (a time that may be a date, an address or a network) is read
from text and documented.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from multidict import MultiMapping

from service.api.errors import ApiError, bad_parameter

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

_AT_FIELD = re.compile(r" - at `\$\.?([^`]*)`$")  # `$.since`, `$.events[3].action`
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def invalid_input(exc: msgspec.ValidationError) -> ApiError:
    """The 400 for msgspec's complaint: it names the top-level field (`body` for the whole),
    and where inside it when deeper (`severity[0]`)."""
    message = str(exc)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        return bad_parameter(unknown.group(1), "is not a known field")
    at = _AT_FIELD.search(message)
    if at is None or not at.group(1):
        return bad_parameter("body", f"is invalid: {message[: at.start()] if at else message}")
    path = at.group(1)
    name = re.split(r"[.\[]", path, maxsplit=1)[0]
    where = f" (at `{path}`)" if path != name else ""
    return bad_parameter(name, f"is invalid: {message[: at.start()]}{where}")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: an Annotated extra
class TextForm:
    """In a field's annotation: how its value is read from a string, and the schema of that
    string (what the document says instead of the field type's own schema)."""

    parse: Callable[[str, str], Any]  # (field name, text) -> value; raises ApiError
    schema: Mapping[str, Any]


# Times: RFC 3339 (an offset or Z; none means UTC) or a date (its midnight, UTC).
_YEAR = r"([1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])"
_LEAP_YEAR = r"(\d\d(0[48]|[2468][048]|[13579][26])|([2468][048]|[13579][26]|0[48])00)"
_DATE = (
    rf"({_YEAR}-((0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])|(0[13-9]|1[0-2])-(29|30)"
    rf"|(0[13578]|1[02])-31)|{_LEAP_YEAR}-02-29)"
)
_CLOCK = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"
_LOCAL_TIME = rf"^{_DATE}[Tt]{_CLOCK}$"  # no offset: UTC
_TIME = re.compile(rf"{_DATE}([Tt]{_CLOCK}([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)?)?")
_UTC_MIN, _UTC_MAX = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def parse_time(name: str, value: str) -> datetime:
    """Read a time of the declared form; an offset past year 1 or 9999 stays at that end."""
    problem = f"must be an RFC 3339 time like 2024-05-01T12:00:00Z, not {value[:64]!r}"
    if not _TIME.fullmatch(value):
        raise bad_parameter(name, problem)
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise bad_parameter(name, problem) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # before year 1 or after 9999 in UTC: the nearest time there is
        return _UTC_MIN if parsed.year == 1 else _UTC_MAX


TIME = TextForm(
    parse_time,
    {
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
            {"type": "string", "pattern": _LOCAL_TIME, "description": "no offset: UTC"},
        ],
        "examples": ["2024-05-01", "2024-05-01T12:00:00Z"],
    },
)

_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_V4_NETWORK = rf"^{_OCTET}(\.{_OCTET}){{3}}/(3[0-2]|[12]?\d)$"
_H = "[0-9A-Fa-f]{1,4}"
_V6 = "|".join(
    (
        f"({_H}:){{7}}{_H}",
        f"({_H}:){{1,7}}:",
        *(f"({_H}:){{1,{7 - n}}}(:{_H}){{1,{n}}}" for n in range(1, 7)),
        f":((:{_H}){{1,7}}|:)",
    )
)
_V6_NETWORK = rf"^({_V6})/(12[0-8]|1[01]\d|[1-9]?\d)$"
_NETWORKS = (re.compile(_V4_NETWORK), re.compile(_V6_NETWORK))


def parse_network(name: str, value: str) -> str:
    """An address or a CIDR network, in its normal form (an address is a /32 or /128)."""
    try:
        if "/" not in value:
            if "%" in value:  # a scoped IPv6 address names an interface, not a network
                raise ValueError(value)
            return str(ipaddress.ip_network(ipaddress.ip_address(value)))
        if not any(pattern.match(value) for pattern in _NETWORKS):  # not 10.0.0.0/255.0.0.0
            raise ValueError(value)
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise bad_parameter(name, "must be an IPv4/IPv6 address or network") from None


NETWORK = TextForm(
    parse_network,
    {
        "anyOf": [
            {"type": "string", "format": "ipv4"},
            {"type": "string", "format": "ipv6"},
            {"type": "string", "pattern": _V4_NETWORK},
            {"type": "string", "pattern": _V6_NETWORK},
        ],
        "examples": ["10.0.0.0/8", "2001:db8::1"],
    },
)


def _members(hint: Any) -> tuple[Any, ...]:
    """The members of a union (or the one type)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _form_of(hint: Any) -> TextForm | None:
    for member in _members(hint):
        if typing.get_origin(member) is typing.Annotated:
            forms = [m for m in member.__metadata__ if isinstance(m, TextForm)]
            if forms:
                return forms[0]
    return None


@functools.cache
def text_forms(kind: type) -> dict[str, TextForm]:
    """The fields of `kind` read through a TextForm."""
    hints = typing.get_type_hints(kind, include_extras=True)
    return {name: form for name, hint in hints.items() if (form := _form_of(hint)) is not None}


@functools.cache
def repeatable(kind: type) -> frozenset[str]:
    """The fields of `kind` that may repeat in a query string: their type admits a list."""
    info = msgspec.inspect.type_info(kind)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"{kind!r} is not a Struct")
    return frozenset(
        field.name
        for field in info.fields
        if any(
            isinstance(t, msgspec.inspect.ListType)
            for t in getattr(field.type, "types", (field.type,))
        )
    )


def convert(data: Any, kind: type[T], *, strict: bool = True) -> T:
    """`data` as `kind`, or a 400 naming the bad field; `strict=False` reads numbers from text.

    A whole number written as a float (54.0) is an integer, as JSON Schema says."""
    try:
        data = _whole(data)
        if isinstance(data, dict) and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            for name, form in text_forms(kind).items():
                if isinstance(data.get(name), str):
                    data[name] = form.parse(name, data[name])
        return msgspec.convert(data, kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise invalid_input(exc) from None
    except RecursionError:  # hostile nesting: bad input, not a server error
        raise bad_parameter("body", "nests too deeply") from None


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    return value


def read_query(
    kind: type[S],
    params: MultiMapping[str],
    fixed: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> S:
    """The fields of `kind` from a query string: repeatable ones as lists, others once; an
    empty value (a blank form field) is no value; `fixed` (path parts) wins over the query."""
    data: dict[str, Any] = {}
    skipped, lists = frozenset(skip), repeatable(kind)
    for name in kind.__struct_fields__:
        values = [v for v in params.getall(name, []) if v != ""]
        if not values or name in skipped:
            continue
        if name in lists:
            data[name] = values
        elif len(values) > 1:
            raise bad_parameter(name, "is given more than once")
        else:
            data[name] = values[0]
    data.update(fixed or {})
    query = convert(data, kind, strict=False)
    for name in data:  # lax reading takes the text "null" for no value: a value was given
        if getattr(query, name) is None:
            raise bad_parameter(name, f"is invalid: {str(data[name])[:64]!r}")
    return query
