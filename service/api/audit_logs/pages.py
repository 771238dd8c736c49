"""Keyset pages of audit logs: the list, the search, an entity's and an actor's history, one row."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from service.api.audit_logs.cursor import CURSORS, Position
from service.api.audit_logs.items import AuditLogItem, AuditLogPage
from service.api.audit_logs.query import AuditLogQuery, query_from_body, query_from_params
from service.api.body import json_response
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import Fields, operation
from service.api.state import POOL
from service.store import pages
from service.store.items import item


class AuditLogId(msgspec.Struct, frozen=True, kw_only=True):
    """The path of one audit log."""

    id: uuid.UUID


def event_id_of(request: web.Request) -> uuid.UUID:
    """The audit log id of the path; a 400 when it is not a UUID."""
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise bad_parameter("id", "must be a UUID") from None


_ENTITY_FIXED = frozenset({"entity_type", "entity_id", "order"})
_ACTOR_FIXED = frozenset({"actor_id", "order"})


async def _page(request: web.Request, query: AuditLogQuery) -> web.Response:
    codec = request.app[CURSORS]
    after = codec.decode(query.cursor, order=query.order) if query.cursor else None
    sql, args = pages.page_query(query, after)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, *args)
        counted = await pages.total(conn, query) if query.count else None
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        next_cursor = codec.encode(Position(last["ts"], last["id"], query.order))
    page: dict[str, Any] = {"items": [item(row) for row in rows], "next_cursor": next_cursor}
    if counted is not None:
        page["total"] = counted
    return json_response(page)


@operation(query=AuditLogQuery, responses={200: AuditLogPage})
async def list_audit_logs(request: web.Request) -> web.Response:
    """Filtered audit logs, newest first unless order=asc, one keyset page at a time."""
    return await _page(request, query_from_params(request.query))


@operation(body=AuditLogQuery, responses={200: AuditLogPage})
async def search_audit_logs(request: web.Request) -> web.Response:
    """The same as the list, with the filters in a JSON body (lists allowed)."""
    return await _page(request, await query_from_body(request))


@operation(
    query=Fields(AuditLogQuery, _ENTITY_FIXED), path=AuditLogQuery, responses={200: AuditLogPage}
)
async def entity_history(request: web.Request) -> web.Response:
    """One entity's history, oldest first."""
    fixed = {
        "entity_type": [request.match_info["entity_type"]],
        "entity_id": request.match_info["entity_id"],
        "order": "asc",
    }
    return await _page(request, query_from_params(request.query, fixed, skip=_ENTITY_FIXED))


@operation(
    query=Fields(AuditLogQuery, _ACTOR_FIXED), path=AuditLogQuery, responses={200: AuditLogPage}
)
async def actor_history(request: web.Request) -> web.Response:
    """One actor's actions, newest first."""
    fixed = {"actor_id": [request.match_info["actor_id"]], "order": "desc"}
    return await _page(request, query_from_params(request.query, fixed, skip=_ACTOR_FIXED))


@operation(path=AuditLogId, responses={200: AuditLogItem})
async def get_audit_log(request: web.Request) -> web.Response:
    """One audit log by id, or 404."""
    event_id = event_id_of(request)
    async with request.app[POOL].acquire() as conn:
        row = await pages.one(conn, event_id)
    if row is None:
        raise ApiError(404, "not_found", f"no audit log has id {event_id}")
    return json_response(item(row))
