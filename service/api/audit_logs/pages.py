"""Keyset pages of audit logs: the list, the search, an entity's and an actor's history, one row."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from service.api.audit_logs.cursor import CURSORS, Position
from service.api.audit_logs.items import AuditLogItem, AuditLogPage
from service.api.audit_logs.query import AuditLogQuery, query_from_body, query_from_params
from service.api.audit_logs.rows import (
    AFTER_ASC,
    AFTER_DESC,
    ORDER_BY,
    SELECT_ITEMS,
    SELECT_ONE,
    item,
    where_of,
)
from service.api.body import json_response
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import Fields, operation
from service.api.state import POOL


class AuditLogId(msgspec.Struct, frozen=True, kw_only=True):
    """The path of one audit log."""

    id: uuid.UUID


# A total is counted for at most this long, then estimated by the planner (and labelled so):
# an exact count over a million rows costs more than a page view should wait.
COUNT_BUDGET_MS = 100
SET_COUNT_BUDGET = f"SET LOCAL statement_timeout = {COUNT_BUDGET_MS}"
COUNT = "SELECT count(*) FROM audit_log "
ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM audit_log "

_ENTITY_FIXED = frozenset({"entity_type", "entity_id", "order"})
_ACTOR_FIXED = frozenset({"actor_id", "order"})


def page_query(query: AuditLogQuery, after: Position | None) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page: keyset on (ts, id), one row more than asked."""
    where = where_of(query)
    if after is not None:
        where.add(AFTER_DESC if query.order == "desc" else AFTER_ASC, after.ts, after.id)
    # The extra row tells whether a next page exists, without a count or an OFFSET.
    sql = f"{SELECT_ITEMS}{where.sql()} {ORDER_BY[query.order]} LIMIT ${len(where.args) + 1}"
    return sql, [*where.args, query.limit + 1]


async def total(conn: Any, query: AuditLogQuery) -> dict[str, Any]:
    """The rows matching: counted within COUNT_BUDGET_MS, else the planner's estimate."""
    where = where_of(query)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(SET_COUNT_BUDGET)
            counted = await conn.fetchval(f"{COUNT}{where.sql()}", *where.args)
        return {"count": counted, "exact": True}
    except asyncpg.QueryCanceledError:
        pass
    plan = await conn.fetchval(f"{ESTIMATE}{where.sql()}", *where.args)
    if isinstance(plan, str):
        plan = json.loads(plan)
    return {"count": int(plan[0]["Plan"]["Plan Rows"]), "exact": False}


async def _page(request: web.Request, query: AuditLogQuery) -> web.Response:
    codec = request.app[CURSORS]
    after = codec.decode(query.cursor, order=query.order) if query.cursor else None
    sql, args = page_query(query, after)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, *args)
        counted = await total(conn, query) if query.count else None
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
    raw = request.match_info["id"]
    try:
        event_id = uuid.UUID(raw)
    except ValueError:
        raise bad_parameter("id", "must be a UUID") from None
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(SELECT_ONE, event_id)
    if row is None:
        raise ApiError(404, "not_found", f"no audit log has id {event_id}")
    return json_response(item(row))
