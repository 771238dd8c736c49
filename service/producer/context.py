"""The audit context: what capture fills into an event that lacks it (request, client IP, actor)."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
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

logger = logging.getLogger(__name__)


class ActorSlot:
    """The actor of one request: set from any task or thread serving it, resolved lazily.

    A middleware puts one slot in the request's context. A copy of the context (a thread of
    a pool running a sync dependency, a task the request started) shares the slot, so an
    actor the app's auth sets there is seen by every capture of the request.
    """

    __slots__ = ("_actor", "_resolve")

    def __init__(self, resolve: Callable[[], Actor | None] | None = None) -> None:
        self._actor: Actor | None = None
        self._resolve = resolve

    def get(self) -> Actor | None:
        """Return the actor; on first use, ask the resolver the middleware was given."""
        resolve = self._resolve
        if resolve is not None:
            self._resolve = None
            try:
                actor = resolve()
            except Exception:
                # Auditing must not break the request it describes; the bug is logged.
                logger.warning(
                    "audit actor resolver failed; the request has no actor", exc_info=True
                )
                actor = None
            if self._actor is None:
                self._actor = actor
        return self._actor

    def set(self, actor: Actor | None) -> None:
        """Make `actor` the request's actor (it wins over the resolver's)."""
        self._resolve = None
        self._actor = actor


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """What capture fills into an event that lacks it: the current request and actor."""

    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    method: str | None = None
    path: str | None = None
    actor: Actor | None = None
    # Set by a middleware: the request's actor, settable from any thread (see ActorSlot).
    actor_slot: ActorSlot | None = None

    def current_actor(self) -> Actor | None:
        """Return the actor of the request: the slot's when it has one, else `actor`."""
        if self.actor_slot is not None:
            actor = self.actor_slot.get()
            if actor is not None:
                return actor
        return self.actor


class DeferredContext:
    """A request's AuditContext, worked out at its first use: most requests capture nothing.

    A middleware subclasses it with the two readings of its request. Its request id is
    worked out on its own (the response echoes it whether or not anything was captured);
    the rest at the first capture or attribute read. It reads as an AuditContext.
    """

    __slots__ = ("_built", "_request_id")

    def __init__(self) -> None:
        self._request_id: str | None = None
        self._built: AuditContext | None = None

    def header_request_id(self) -> str | None:
        """The client's X-Request-ID, as sent (None when absent)."""
        raise NotImplementedError

    def build(self, request_id: str) -> AuditContext:
        """Build the context (with `request_context`), with this request id."""
        raise NotImplementedError

    @property
    def request_id(self) -> str:
        """The request's id: the client's when sane, else a new one (the same from then on)."""
        request_id = self._request_id
        if request_id is None:
            with _deferred_lock:  # threads of the request's pool may ask at once
                if self._request_id is None:
                    self._request_id = sane_request_id(self.header_request_id()) or new_request_id()
                request_id = self._request_id
        return request_id

    def resolve(self) -> AuditContext:
        """The context, built once."""
        built = self._built
        if built is None:
            request_id = self.request_id
            with _deferred_lock:
                if self._built is None:
                    try:
                        self._built = self.build(request_id)
                    except Exception:
                        # Auditing must not break the request it describes; the bug is logged.
                        logger.warning(
                            "audit context failed; the request has its id only", exc_info=True
                        )
                        self._built = AuditContext(request_id=request_id, actor_slot=ActorSlot())
                built = self._built
        return built

    # The rest of AuditContext, for code that reads `audit_context` itself.

    @property
    def ip(self) -> str | None:
        return self.resolve().ip

    @property
    def user_agent(self) -> str | None:
        return self.resolve().user_agent

    @property
    def method(self) -> str | None:
        return self.resolve().method

    @property
    def path(self) -> str | None:
        return self.resolve().path

    @property
    def actor(self) -> Actor | None:
        return self.resolve().actor

    @property
    def actor_slot(self) -> ActorSlot | None:
        return self.resolve().actor_slot

    def current_actor(self) -> Actor | None:
        return self.resolve().current_actor()


_deferred_lock = threading.Lock()

audit_context: ContextVar[AuditContext | DeferredContext | None] = ContextVar(
    "audit_context", default=None
)


def current_context() -> AuditContext | None:
    """The audit context of the current request (or task), if any, worked out."""
    context = audit_context.get()
    if isinstance(context, DeferredContext):
        return context.resolve()
    return context


def set_actor(actor: Actor) -> None:
    """Set the actor of the current request (or task) for the events captured after this.

    Inside a request of one of the middlewares (aiohttp, ASGI, Django) it holds for the
    whole request, also when called from a sync dependency run in a thread pool.
    """
    current = current_context()
    if current is None:
        audit_context.set(AuditContext(actor=actor))
    elif current.actor_slot is not None:
        current.actor_slot.set(actor)
    else:
        audit_context.set(msgspec.structs.replace(current, actor=actor))


class TrustedProxies:
    """The proxies whose forwarding headers are believed, and what each address seen is.

    A middleware makes one at start: its cache is keyed by the address alone (a key that
    also held the networks would hash every network, in Python, twice a request).
    """

    __slots__ = ("_remembered", "networks")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        # Parsing an address and testing networks cost microseconds; the same proxies and
        # clients come back, so each answer is remembered.
        self._remembered = functools.lru_cache(maxsize=ADDRESSES_KEPT)(
            functools.partial(
                _classify_address, trusted=self.networks, ipv4=_ipv4_ranges(self.networks)
            )
        )

    def classify(self, value: str | None) -> tuple[str | None, bool]:
        """The address `value` names (None when it names none), and whether it is trusted."""
        if value is None:
            return None, False
        if len(value) <= ADDRESS_CACHED_MAX_CHARS:
            return self._remembered(value)
        return _classify_address(value, self.networks)


def trusted_networks(proxies: Iterable[str] | str) -> TrustedProxies:
    """Parse trusted proxies (addresses or CIDR networks); a bad one is a ValueError."""
    # A lone string would otherwise be read as one proxy per character.
    items = proxies.split(",") if isinstance(proxies, str) else proxies
    return TrustedProxies(
        ipaddress.ip_network(proxy.strip(), strict=False) for proxy in items if proxy.strip()
    )


def new_request_id() -> str:
    """A new request id: 32 hex digits, as uuid4().hex, at a fifth of its cost."""
    return os.urandom(16).hex()


def request_context(
    *,
    request_id: str | None,
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    user_agent: str | None,
    method: str | None,
    path: str | None,
    trusted: TrustedProxies | Sequence[IPNetwork],
    actor: Actor | None = None,
    resolve_actor: Callable[[], Actor | None] | None = None,
) -> AuditContext:
    """Build the context of one HTTP request, by the same rules for every framework.

    `request_id` is the client's `X-Request-ID` (kept when sane, else a new one); the
    client IP is the peer unless the peer is a trusted proxy; `path` must come without its
    query string (query strings often carry tokens).
    """
    return AuditContext(
        request_id=sane_request_id(request_id) or new_request_id(),
        ip=client_ip(peer, forwarded_for, real_ip, trusted),
        user_agent=clip(user_agent, USER_AGENT_MAX_CHARS),
        method=clip(method, METHOD_MAX_CHARS),
        path=clip(path, PATH_MAX_CHARS),
        actor=actor,
        actor_slot=ActorSlot(resolve_actor),
    )


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


ADDRESSES_KEPT = 4096  # addresses remembered: proxies and clients repeat from request to request
ADDRESS_CACHED_MAX_CHARS = 64  # an address with a port and brackets fits


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted: TrustedProxies | Sequence[IPNetwork],
) -> str | None:
    """Return the client's address: the peer, or what a trusted proxy peer says it forwarded."""
    if not isinstance(trusted, TrustedProxies):
        trusted = _proxies_of(tuple(trusted))
    classify = trusted.classify
    peer_address, peer_trusted = classify(peer)
    if peer_address is None or not peer_trusted:
        return peer_address
    if forwarded_for:
        # Proxies append, so walk from the right: the first untrusted hop is the client.
        for hop in reversed(forwarded_for.split(",")):
            address, hop_trusted = classify(hop)
            if address is None:
                break  # a malformed hop: nothing left of it can be believed
            if not hop_trusted:
                return address
    real, _ = classify(real_ip)
    if real is not None:
        return real
    return peer_address


@functools.lru_cache(maxsize=64)
def _proxies_of(networks: tuple[IPNetwork, ...]) -> TrustedProxies:
    return TrustedProxies(networks)


def _classify_address(
    value: str,
    trusted: Sequence[IPNetwork],
    ipv4: tuple[tuple[int, int], ...] | None = None,
) -> tuple[str | None, bool]:
    """`TrustedProxies.classify` uncached; `ipv4`: the IPv4 networks of `trusted`, as ints."""
    text = value.strip()
    quad = _DOTTED_QUAD.fullmatch(text)
    if quad is not None:
        # The common case, a plain IPv4 address, without the ipaddress module (a new client
        # each request must stay cheap): it is its own canonical text.
        a, b, c, d = (int(octet) for octet in quad.groups())
        number = (a << 24) | (b << 16) | (c << 8) | d
        if ipv4 is None:
            ipv4 = _ipv4_ranges(tuple(trusted))
        return text, any(number & mask == net for net, mask in ipv4)
    address = parse_ip(text)
    if address is None:
        return None, False
    return str(address), _is_trusted(address, trusted)


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros, as ipaddress
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


@functools.lru_cache(maxsize=64)
def _ipv4_ranges(trusted: tuple[IPNetwork, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(
        (int(net.network_address), int(net.netmask)) for net in trusted if net.version == 4
    )


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
        actor = context.current_actor()
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
