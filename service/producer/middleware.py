"""The aiohttp middleware of producers: it sets the audit context of each request."""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.events import Actor
from service.producer.context import (
    METHOD_MAX_CHARS,
    PATH_MAX_CHARS,
    USER_AGENT_MAX_CHARS,
    AuditContext,
    audit_context,
    client_ip,
    clip,
    sane_request_id,
)

REQUEST_ID_HEADER = "X-Request-ID"

logger = logging.getLogger(__name__)


def context_middleware(
    *,
    trusted_proxies: Iterable[str] = (),
    actor_resolver: Callable[[web.Request], Actor | None] | None = None,
) -> Middleware:
    """Make an aiohttp middleware that sets `audit_context` for each request."""
    # A lone string would otherwise be read as one proxy per character.
    proxies = (trusted_proxies,) if isinstance(trusted_proxies, str) else tuple(trusted_proxies)
    trusted = tuple(ipaddress.ip_network(proxy.strip(), strict=False) for proxy in proxies)

    @web.middleware
    async def audit_context_middleware(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        request_id = sane_request_id(request.headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
        forwarded = request.headers.getall("X-Forwarded-For", [])
        context = AuditContext(
            request_id=request_id,
            ip=client_ip(
                request.remote,
                ",".join(forwarded) if forwarded else None,
                request.headers.get("X-Real-IP"),
                trusted,
            ),
            user_agent=clip(request.headers.get("User-Agent"), USER_AGENT_MAX_CHARS),
            method=clip(request.method, METHOD_MAX_CHARS),
            # The path without its query string: query strings often carry tokens.
            path=clip(request.path, PATH_MAX_CHARS),
            actor=_resolve_actor(actor_resolver, request),
        )
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
