"""The ASGI middleware of producers (Starlette, FastAPI, any ASGI app): each request's context.

    app.add_middleware(AuditContextMiddleware)                      # FastAPI / Starlette
    app = AuditContextMiddleware(app, actor_resolver=user_actor)    # any ASGI app

Pure ASGI (no Starlette import), so it costs a few microseconds a request and works under
any framework. The rules (request id, client IP behind trusted proxies only) are those of
the aiohttp middleware: both build the context with `request_context`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from service.events import Actor
from service.producer.context import audit_context, request_context, trusted_networks
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
        request_id = forwarded_for = real_ip = user_agent = None
        for name, value in scope.get("headers") or ():
            if name == REQUEST_ID_HEADER:
                if request_id is None:
                    request_id = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                # Several headers are one list, in order (RFC 9110 §5.3).
                text = value.decode("latin-1")
                forwarded_for = text if forwarded_for is None else f"{forwarded_for},{text}"
            elif name == b"x-real-ip":
                real_ip = value.decode("latin-1")
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
        client = scope.get("client")
        resolver = self._resolver
        context = request_context(
            request_id=request_id,
            peer=client[0] if client else None,
            forwarded_for=forwarded_for,
            real_ip=real_ip,
            user_agent=user_agent,
            method=scope.get("method"),
            path=scope.get("path"),  # never the query string: it often carries tokens
            trusted=self._trusted,
            resolve_actor=None if resolver is None else (lambda: resolver(scope)),
        )
        echoed = (REQUEST_ID_HEADER, (context.request_id or "").encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                for name, _ in headers:
                    if name.lower() == REQUEST_ID_HEADER:
                        break  # the app set its own
                else:
                    headers.append(echoed)
                message["headers"] = headers  # a copy of the list: the app's stays as it was
            await send(message)

        token = audit_context.set(context)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            audit_context.reset(token)
