"""The filters of the audit-log routes: one query model, read from query strings or JSON."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from multidict import MultiMapping

from service.api.errors import ApiError, bad_parameter
from service.events import Outcome, Severity

MAX_LIMIT = 1000  # items per page
DEFAULT_LIMIT = 50

Text = Annotated[str, msgspec.Meta(max_length=1024)]
Order = Literal["asc", "desc"]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class AuditLogQuery(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Every filter of the audit-log routes; a list matches any of its values."""

    action: Text | list[Text] | None = None
    action_prefix: Text | None = None
    category: Text | None = None
    severity: Severity | list[Severity] | None = None
    outcome: Outcome | None = None
    actor_id: Text | list[Text] | None = None
    entity_type: Text | list[Text] | None = None
    entity_id: Text | None = None
    tenant: Text | list[Text] | None = None
    request_id: Text | None = None
    ip: Text | None = None  # an address or a network (CIDR): rows from inside it
    since: UtcTime | None = None  # inclusive
    until: UtcTime | None = None  # inclusive
    q: Text | None = None
    order: Order = "desc"
    limit: Limit = DEFAULT_LIMIT
    cursor: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


QUERY_FIELDS: tuple[str, ...] = AuditLogQuery.__struct_fields__
LIST_FIELDS = frozenset({"action", "severity", "actor_id", "entity_type", "tenant"})
PAGING_FIELDS = frozenset({"order", "limit", "cursor"})


_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_]+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def _bad_input(exc: msgspec.ValidationError) -> ApiError:
    message = str(exc)
    found = _AT_FIELD.search(message) or _UNKNOWN_FIELD.search(message)
    name = found.group(1) if found else "body"
    problem = message.split(" - at `", 1)[0]
    if _UNKNOWN_FIELD.search(message):
        return bad_parameter(name, "is not a known filter")
    return bad_parameter(name, f"is invalid: {problem}")


def parse_time(name: str, value: str) -> datetime:
    """Read an RFC 3339 time (or a date); without an offset it is UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: an offset pushes it past year 1 or 9999
        raise bad_parameter(
            name, f"must be an RFC 3339 time like 2024-05-01T12:00:00Z, not {value[:64]!r}"
        ) from None


def _normalize(data: dict[str, Any]) -> dict[str, Any]:
    for name in ("since", "until"):
        if isinstance(data.get(name), str):
            data[name] = parse_time(name, data[name])
    ip = data.get("ip")
    if isinstance(ip, str):
        try:
            data["ip"] = str(ipaddress.ip_network(ip.strip(), strict=False))
        except ValueError:
            raise bad_parameter("ip", "must be an IPv4/IPv6 address or network") from None
    return data


def convert_query(data: dict[str, Any], *, strict: bool) -> AuditLogQuery:
    """Validate filters given as plain data; a 400 naming the bad one."""
    try:
        return msgspec.convert(_normalize(data), AuditLogQuery, strict=strict)
    except msgspec.ValidationError as exc:
        raise _bad_input(exc) from None


def query_from_params(
    params: MultiMapping[str],
    fixed: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> AuditLogQuery:
    """Read the filters of a query string: list filters repeat, others appear once."""
    data: dict[str, Any] = {}
    skipped = set(skip)
    for name in QUERY_FIELDS:
        # An empty value (a blank form field) means no filter.
        values = [v for v in params.getall(name, []) if v != ""]
        if not values or name in skipped:
            continue
        if name in LIST_FIELDS:
            data[name] = values
        elif len(values) > 1:
            raise bad_parameter(name, "is given more than once")
        else:
            data[name] = values[0]
    data.update(fixed or {})
    return convert_query(data, strict=False)


async def query_from_body(request: web.Request) -> AuditLogQuery:
    """Read the filters of a JSON body (415 if not JSON, 413 if too large)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the filters as application/json")
    body = await request.read()
    try:
        data = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise bad_parameter("body", f"is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's answer to hostile nesting
        raise bad_parameter("body", "is not valid JSON: it nests too deeply") from None
    except UnicodeDecodeError:  # msgspec's answer to a string that is not UTF-8
        raise bad_parameter("body", "is not valid JSON: it is not UTF-8") from None
    if not isinstance(data, dict):
        raise bad_parameter("body", "must be a JSON object of filters")
    return convert_query(data, strict=True)


def describe(query: AuditLogQuery) -> dict[str, Any]:
    """The filters that are set, as plain data (for the audit trail)."""
    described: dict[str, Any] = msgspec.to_builtins(query)
    described.pop("cursor", None)
    return described
