"""The aiohttp middleware of producers: it sets the audit context of each request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.events import Actor
from service.producer.context import audit_context, request_context, trusted_networks

REQUEST_ID_HEADER = "X-Request-ID"

logger = logging.getLogger(__name__)


def context_middleware(
    *,
    trusted_proxies: Iterable[str] = (),
    actor_resolver: Callable[[web.Request], Actor | None] | None = None,
) -> Middleware:
    """Make an aiohttp middleware that sets `audit_context` for each request."""
    trusted = trusted_networks(trusted_proxies)

    @web.middleware
    async def audit_context_middleware(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        context = request_context(
            request_id=request.headers.get(REQUEST_ID_HEADER),
            peer=request.remote,
            forwarded_for=",".join(forwarded) if forwarded else None,
            real_ip=request.headers.get("X-Real-IP"),
            user_agent=request.headers.get("User-Agent"),
            method=request.method,
            path=request.path,
            trusted=trusted,
            actor=_resolve_actor(actor_resolver, request),
        )
        request_id = context.request_id or ""
        token = audit_context.set(context)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            audit_context.reset(token)
        # A response already prepared (streamed) has sent its headers.
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return audit_context_middleware


def _resolve_actor(
    resolver: Callable[[web.Request], Actor | None] | None, request: web.Request
) -> Actor | None:
    if resolver is None:
        return None
    try:
        return resolver(request)
    except Exception:
        # Auditing must not break the request it describes; the bug is logged, not hidden.
        logger.warning("audit actor resolver failed; the request has no actor", exc_info=True)
        return None
