"""Values to suggest while a filter is typed: actions, entity types, an entity type's ids.

Each is a skip scan of the column's index (one index probe per partition and value, however
many rows share a value): the values in the index's order from the prefix on, as long as
they start with it. In a database whose collation is not byte order a value may sort outside
the prefix's run and be left out: these are suggestions, not a search (the filters are).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from service.api.audit_logs.query import Text
from service.api.body import json_response
from service.api.errors import bad_parameter
from service.api.inputs import read_query
from service.api.openapi import operation
from service.api.state import POOL
from service.store import pages
from service.store.items import holds_nul

MAX_SUGGESTIONS = 100


class SuggestionsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which filter's values, from which prefix."""

    field: Literal["action", "entity_type", "entity_id"] = "action"
    prefix: Annotated[Text, msgspec.Meta(description="values starting with this")] = ""
    entity_type: (
        Annotated[Text, msgspec.Meta(description="with field=entity_id (required): its ids")] | None
    ) = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_SUGGESTIONS)] = 20


class Suggestions(msgspec.Struct, frozen=True, kw_only=True):
    """Stored values of the field, in the index's order."""

    values: list[str]


@operation(
    query=SuggestionsQuery,
    responses={200: Suggestions},
    description="For a console's autocomplete: each value is one index probe, so the answer "
    "costs the same on any number of rows.",
)
async def audit_log_suggestions(request: web.Request) -> web.Response:
    """Stored values of a filter (actions, entity types, an entity type's ids) from a prefix."""
    query = read_query(SuggestionsQuery, request.query)
    scope: list[str] = []
    if query.field == "entity_id":
        if query.entity_type is None:
            raise bad_parameter("entity_type", "is required with field=entity_id")
        scope.append(query.entity_type)
    if any(holds_nul(a) for a in (query.prefix, *scope)):  # PostgreSQL text holds no NUL
        return json_response({"values": []})
    async with request.app[POOL].acquire() as conn:
        values = await pages.suggestions(conn, query.field, query.prefix, query.limit, *scope)
    return json_response({"values": values})
