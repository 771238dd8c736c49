"""The filters of the audit-log routes: one query model, read from query strings or JSON.

`AuditLogQuery` is the one declaration: the GET parser, the POST search body and the OpenAPI
parameters and body schema all derive from it (service/api/inputs.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from multidict import MultiMapping

from service.api.body import read_json
from service.api.formats import NETWORK, TIME
from service.api.inputs import convert, read_query
from service.events import Outcome, Severity

MAX_LIMIT = 1000  # items per page
DEFAULT_LIMIT = 50

# A NUL is allowed, and matches nothing (rows.py): no stored text holds one. (Not declared as
# a pattern: msgspec 0.22 crashes at exit after the schema of `str` with a pattern in a union
# with a list of it.)
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Order = Literal["asc", "desc"]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
Time = Annotated[datetime, msgspec.Meta(tz=True), TIME]
Network = Annotated[str, msgspec.Meta(max_length=1024), NETWORK]
MetadataMatch = Annotated[
    str,
    msgspec.Meta(
        max_length=1024,
        description="`key=value`: metadata[key] equals value (compared as text); `key` alone: "
        "metadata has the key; a dotted key (`a.b=x`) reaches into nested objects",
    ),
]
Cursor = Annotated[
    str,
    msgspec.Meta(
        max_length=1024,
        pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
        description="next_cursor of the previous page, as is (signed: no other value works)",
    ),
]


class AuditLogQuery(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Every filter of the audit-log routes; a list (a repeated parameter) matches any."""

    action: Text | list[Text] | None = None
    action_prefix: Text | None = None
    category: Text | None = None
    severity: Severity | list[Severity] | None = None
    outcome: Outcome | None = None
    actor_id: Text | list[Text] | None = None
    actor_name: (
        Annotated[
            Text,
            msgspec.Meta(description="rows whose actor's name starts with this, in any case"),
        ]
        | None
    ) = None
    entity_type: Text | list[Text] | None = None
    entity_id: Text | None = None
    tenant: Text | list[Text] | None = None
    request_id: Text | None = None
    ip: Network | None = None  # an address or a network (CIDR): rows from inside it
    since: Time | None = None  # inclusive
    until: Time | None = None  # inclusive
    q: Annotated[Text, msgspec.Meta(description="full-text search")] | None = None
    order: Order = "desc"
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None
    # Inside payloads (rows.py): every `metadata` condition holds; `change_field` matches any.
    metadata: MetadataMatch | list[MetadataMatch] | None = None
    change_field: (
        Annotated[Text, msgspec.Meta(description="rows whose changes touch this field")]
        | list[Text]
        | None
    ) = None
    count: Annotated[
        bool,
        msgspec.Meta(
            description="also return `total`: the rows matching, exact when counted within "
            "the budget, else the planner's estimate, labelled as one"
        ),
    ] = False


PAGING_FIELDS = frozenset({"order", "limit", "cursor", "count"})
_NO_FILTERS = AuditLogQuery()


def convert_query(data: Mapping[str, Any], *, strict: bool) -> AuditLogQuery:
    """Validate filters given as plain data; a 400 naming the bad one."""
    return convert(data, AuditLogQuery, strict=strict)


def query_from_params(
    params: MultiMapping[str],
    fixed: Mapping[str, Any] | None = None,
    *,
    skip: Iterable[str] = (),
) -> AuditLogQuery:
    """Read the filters of a query string: list filters repeat, others appear once."""
    return read_query(AuditLogQuery, params, fixed, skip=skip)


async def query_from_body(request: web.Request) -> AuditLogQuery:
    """Read the filters of a JSON body (none when it is empty; 415 if not JSON, 413 if too
    large)."""
    return await read_json(request, AuditLogQuery, default=_NO_FILTERS)


def describe(query: AuditLogQuery) -> dict[str, Any]:
    """The filters that are set, as plain data (for the audit trail)."""
    described: dict[str, Any] = msgspec.to_builtins(query)
    described.pop("cursor", None)
    return described
