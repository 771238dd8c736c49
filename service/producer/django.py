"""The Django middleware of producers: the audit context of each request, sync and async views.

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "service.producer.django.AuditContextMiddleware",   # after auth: it reads request.user
    ]

Settings (all optional): `AUDITQ_TRUSTED_PROXIES` (a list; default: the environment variable
of the same name) and `AUDITQ_ACTOR_RESOLVER` (a callable or its dotted path, taking the
request and returning an `Actor` or None; default: the logged-in `request.user`). The rules
(request id, client IP behind trusted proxies only) are those of the aiohttp and ASGI
middlewares: all build the context with `request_context`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from service.events import Actor
from service.producer.context import (
    AuditContext,
    audit_context,
    request_context,
    trusted_networks,
)
from service.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"

ActorResolver = Callable[[Any], Actor | None]


def user_actor(request: Any) -> Actor | None:
    """Return the logged-in Django user of `request` as the actor (None when anonymous)."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Actor(
        id=str(user.pk),
        type="user",
        name=user.get_username() or None,
        email=getattr(user, "email", None) or None,
    )


class AuditContextMiddleware:
    """Set `audit_context` for each request, echo its X-Request-ID; sync and async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        proxies = getattr(django_settings, "AUDITQ_TRUSTED_PROXIES", None)
        if proxies is None:
            proxies = Settings.from_env(published=False).trusted_proxies
        self._trusted = trusted_networks(proxies)
        resolver = getattr(django_settings, "AUDITQ_ACTOR_RESOLVER", None)
        if isinstance(resolver, str):
            resolver = import_string(resolver)
        self._resolver: ActorResolver = resolver or user_actor

    def __call__(self, request: Any) -> Any:
        """Run the view with the request's audit context set."""
        if self._async:
            return self._acall(request)
        context = self._context(request)
        token = audit_context.set(context)
        try:
            response = self.get_response(request)
        finally:
            audit_context.reset(token)
        return _echo(response, context)

    async def _acall(self, request: Any) -> Any:
        auser: Callable[[], Awaitable[Any]] | None = getattr(request, "auser", None)
        if auser is not None:
            # `request.user` is lazy and loads the session synchronously, which an async
            # context forbids: load it here the async way, once (Django caches it).
            request.user = await auser()
        context = self._context(request)
        token = audit_context.set(context)
        try:
            response = await self.get_response(request)
        finally:
            audit_context.reset(token)
        return _echo(response, context)

    def _context(self, request: Any) -> AuditContext:
        meta = request.META
        resolver = self._resolver
        return request_context(
            request_id=meta.get("HTTP_X_REQUEST_ID"),
            peer=meta.get("REMOTE_ADDR"),
            forwarded_for=meta.get("HTTP_X_FORWARDED_FOR"),
            real_ip=meta.get("HTTP_X_REAL_IP"),
            user_agent=meta.get("HTTP_USER_AGENT"),
            method=request.method,
            path=request.path,  # never the query string: it often carries tokens
            trusted=self._trusted,
            # Asked at the request's first capture: a request that captures nothing pays
            # nothing, and an actor the view logs in is seen.
            resolve_actor=lambda: resolver(request),
        )


def _echo(response: Any, context: AuditContext) -> Any:
    if not response.has_header(REQUEST_ID_HEADER):
        response[REQUEST_ID_HEADER] = context.request_id
    return response
