"""The audit context: what capture fills into an event that lacks it (request, client IP, actor)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from contextvars import ContextVar

import msgspec

from service.events import Actor, AuditEvent, RequestInfo

REQUEST_ID_MAX_CHARS = 128  # characters
# The limits of service.events.RequestInfo: longer values would make every event invalid.
USER_AGENT_MAX_CHARS = 4096  # characters
METHOD_MAX_CHARS = 16  # characters
PATH_MAX_CHARS = 4096  # characters

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


def clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def with_context(event: AuditEvent, context: AuditContext) -> AuditEvent:
    """Fill the request and actor an event lacks from the current context."""
    actor = event.actor
    if actor is None:
        actor = context.actor
    request = event.request
    known = {
        "id": context.request_id,
        "ip": context.ip,
        "user_agent": context.user_agent,
        "method": context.method,
        "path": context.path,
    }
    if request is None:
        fill = {name: value for name, value in known.items() if value is not None}
        if fill:
            request = msgspec.structs.replace(RequestInfo(), **fill)
    else:
        fill = {
            name: value
            for name, value in known.items()
            if value is not None and getattr(request, name, None) is None
        }
        if fill:
            request = msgspec.structs.replace(request, **fill)
    if actor is event.actor and request is event.request:
        return event
    return msgspec.structs.replace(event, actor=actor, request=request)
