"""Request context for audit events: request id, client IP, user agent and actor per request."""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.events import Actor

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_MAX_CHARS = 128  # characters
# The limits of service.events.RequestInfo: longer values would make every event invalid.
USER_AGENT_MAX_CHARS = 4096  # characters
METHOD_MAX_CHARS = 16  # characters
PATH_MAX_CHARS = 4096  # characters

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """What capture fills into an event that lacks it: the current request and actor."""

    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    method: str | None = None
    path: str | None = None
    actor: Actor | None = None


audit_context: ContextVar[AuditContext | None] = ContextVar("audit_context", default=None)


def set_actor(actor: Actor) -> None:
    """Set the actor of the current request (or task) for the events captured after this."""
    current = audit_context.get()
    if current is None:
        audit_context.set(AuditContext(actor=actor))
    else:
        audit_context.set(msgspec.structs.replace(current, actor=actor))


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
            user_agent=_clip(request.headers.get("User-Agent"), USER_AGENT_MAX_CHARS),
            method=_clip(request.method, METHOD_MAX_CHARS),
            # The path without its query string: query strings often carry tokens.
            path=_clip(request.path, PATH_MAX_CHARS),
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


def sane_request_id(value: str | None) -> str | None:
    """Return the header's request id when it is short printable ASCII, else None."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > REQUEST_ID_MAX_CHARS:
        return None
    if not (value.isascii() and value.isprintable()):
        return None
    return value


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted: Sequence[IPNetwork],
) -> str | None:
    """Return the client's address: the peer, or what a trusted proxy peer says it forwarded."""
    peer_address = parse_ip(peer)
    if peer_address is None or not _is_trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else None
    if forwarded_for:
        # Proxies append, so walk from the right: the first untrusted hop is the client.
        for hop in reversed(forwarded_for.split(",")):
            address = parse_ip(hop)
            if address is None:
                break  # a malformed hop: nothing left of it can be believed
            if not _is_trusted(address, trusted):
                return str(address)
    real = parse_ip(real_ip)
    if real is not None:
        return str(real)
    return str(peer_address)


def parse_ip(value: str | None) -> IPAddress | None:
    """Parse an address as proxies write it (optionally with a port); None when it is not one."""
    if value is None:
        return None
    text = value.strip()
    candidates = [text]
    if text.startswith("[") and "]" in text:
        candidates.append(text[1 : text.index("]")])  # [v6]:port
    elif text.count(":") == 1:
        candidates.append(text.split(":", 1)[0])  # v4:port
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address
    return None


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


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
