"""The ASGI middleware of producers (Starlette, FastAPI, any ASGI app): each request's context.

    app.add_middleware(AuditContextMiddleware)                      # FastAPI / Starlette
    app = AuditContextMiddleware(app, actor_resolver=user_actor)    # any ASGI app

Pure ASGI (no Starlette import), so it costs a few microseconds a request and works under
any framework. The rules (request id, client IP behind trusted proxies only) are those of
the aiohttp middleware: both build the context with `request_context`, here at the request's
first capture (a request that captures nothing reads its X-Request-ID and nothing else).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from service.events import Actor
from service.producer.context import (
    AuditContext,
    DeferredContext,
    TrustedProxies,
    audit_context,
    request_context,
    trusted_networks,
)
from service.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ActorResolver = Callable[[Scope], Actor | None]

REQUEST_ID_HEADER = b"x-request-id"
_CONTEXT_SCOPES = frozenset({"http", "websocket"})


class AuditContextMiddleware:
    """Set `audit_context` for each HTTP or WebSocket request, and echo its X-Request-ID.

    `trusted_proxies`: peers whose X-Forwarded-For / X-Real-IP are believed; None reads
    AUDITQ_TRUSTED_PROXIES. `actor_resolver(scope)` is asked for the actor at the request's
    first capture (so it sees what auth middleware put in the scope, e.g. `scope["user"]`);
    the app may instead call `service.producer.context.set_actor` from its auth dependency.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Iterable[str] | None = None,
        actor_resolver: ActorResolver | None = None,
    ) -> None:
        self.app = app
        if trusted_proxies is None:
            trusted_proxies = Settings.from_env(published=False).trusted_proxies
        self._trusted = trusted_networks(trusted_proxies)
        self._resolver = actor_resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with the request's audit context set."""
        if scope["type"] not in _CONTEXT_SCOPES:
            await self.app(scope, receive, send)
            return
        context = _ScopeContext(scope, send, self._trusted, self._resolver)
        token = audit_context.set(context)
        try:
            await self.app(scope, receive, context.send)
        finally:
            audit_context.reset(token)


class _ScopeContext(DeferredContext):
    """One request's audit context, read from its scope when first used; and its `send`."""

    __slots__ = (
        "_client",
        "_headers",
        "_method",
        "_path",
        "_resolver",
        "_scope",
        "_send",
        "_trusted",
    )

    def __init__(
        self, scope: Scope, send: Send, trusted: TrustedProxies, resolver: ActorResolver | None
    ) -> None:
        self._request_id = self._built = None  # DeferredContext's, without a call
        # The request as it came in (apps and routers inside may rewrite the scope); the
        # resolver reads the scope as it is at the first capture.
        self._headers = scope.get("headers") or ()
        self._client = scope.get("client")
        self._method = scope.get("method")
        self._path = scope.get("path")  # never the query string: it often carries tokens
        self._scope = scope
        self._send = send
        self._trusted = trusted
        self._resolver = resolver

    def header_request_id(self) -> str | None:
        for name, value in self._headers:
            if name == REQUEST_ID_HEADER:
                return value.decode("latin-1")  # type: ignore[no-any-return]
        return None

    def build(self, request_id: str) -> AuditContext:
        forwarded_for = real_ip = user_agent = None
        for name, value in self._headers:
            if name == b"x-forwarded-for":
                # Several headers are one list, in order (RFC 9110 §5.3).
                text = value.decode("latin-1")
                forwarded_for = text if forwarded_for is None else f"{forwarded_for},{text}"
            elif name == b"x-real-ip":
                real_ip = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        client = self._client
        scope, resolver = self._scope, self._resolver
        return request_context(
            request_id=request_id,
            peer=client[0] if client else None,
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            user_agent=user_agent,
            method=self._method,
            path=self._path,
            trusted=self._trusted,
            resolve_actor=None if resolver is None else (lambda: resolver(scope)),
        )

    def send(self, message: Message) -> Awaitable[None]:
        """The app's `send`: the response's start echoes the request id.

        Not a coroutine: it hands back the server's own awaitable (one frame less a message).
        """
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or ())
            for name, _ in headers:
                # Most names differ in length: no lowercase copy is made of them.
                if len(name) == len(REQUEST_ID_HEADER) and name.lower() == REQUEST_ID_HEADER:
                    break  # the app set its own
            else:
                headers.append((REQUEST_ID_HEADER, self.request_id.encode("ascii")))
            message["headers"] = headers  # a copy of the list: the app's stays as it was
        return self._send(message)
