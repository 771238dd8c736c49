"""Values the JSON types cannot describe, as query filters take them: a time that may be a
date, an address or a network. Each is a `TextForm`: how it is read from text (exactly the
strings its schema admits) and that schema, for the OpenAPI document."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from service.api.errors import bad_parameter


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
