"""Admin route over the store's policy (contract §6): what the store keeps, read-only here."""

from __future__ import annotations

from aiohttp import web

from service.api.body import json_response
from service.api.openapi import operation
from service.api.state import POOL
from service.store import policy as store_policy


@operation(
    summary="The store's policy: how long rows are kept (only the schema owner sets it)",
    responses={200: store_policy.Policy},
)
async def get_policy(request: web.Request) -> web.Response:
    """Show the retention policy, when it was set and by which role."""
    async with request.app[POOL].acquire() as conn:
        return json_response(await store_policy.show(conn))


ROUTES = [web.get("/api/v1/admin/policy", get_policy)]
