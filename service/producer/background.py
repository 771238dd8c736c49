"""An AuditClient on its own event-loop thread, for sync code (Django, WSGI apps, scripts).

    audit = start_client()                       # once, at import (AUDITQ_* settings)
    audit.capture_nowait(event)                  # from any thread: returns at once
    event_id = capture_sync(audit, event)        # from a sync view: the id or None, bounded
    event_id = await audit.capture(event)        # from an async view, on any loop

The client is flushed and closed when the process exits (or by `stop_client`).
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from typing import Unpack

from service.events import AuditEvent
from service.producer.client import CLOSE_TIMEOUT, AuditClient, ClientOptions
from service.producer.context import audit_context
from service.settings import Settings

_loops: weakref.WeakKeyDictionary[AuditClient, asyncio.AbstractEventLoop] = (
    weakref.WeakKeyDictionary()
)


def start_client(settings: Settings | None = None, **options: Unpack[ClientOptions]) -> AuditClient:
    """Start an AuditClient on a daemon thread's event loop; it is closed at process exit."""
    settings = Settings.from_env() if settings is None else settings
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="auditq-client", daemon=True)
    thread.start()

    async def bound_client() -> AuditClient:
        client = AuditClient.from_settings(settings, **options)
        client.bind_loop()  # this loop, not the loop of its first caller
        return client

    try:
        client = asyncio.run_coroutine_threadsafe(bound_client(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    _loops[client] = loop
    atexit.register(stop_client, client)
    return client


def capture_sync(client: AuditClient, event: AuditEvent) -> str | None:
    """Capture from sync code: the event id, or None (logged); never raises, bounded."""
    loop = _loops.get(client)
    if loop is None or not loop.is_running():
        # Not a started client (or stopped): the client itself logs the failure line.
        client.capture_nowait(event)
        return None
    # The client's loop runs tasks in its own context: hand it the caller's request context.
    context = audit_context.get()
    if context is not None:
        # Here, in the caller's thread: a resolver may read what only this thread may (a
        # Django user loads its session through the request's database connection).
        context.current_actor()

    async def capture_in_context() -> str | None:
        audit_context.set(context)  # the task's own copy of the context
        return await client.capture(event)

    return asyncio.run_coroutine_threadsafe(capture_in_context(), loop).result()


def stop_client(client: AuditClient, timeout_s: float = CLOSE_TIMEOUT) -> None:
    """Flush and close a client of `start_client`, then stop its thread; idempotent."""
    loop = _loops.pop(client, None)
    if loop is None or not loop.is_running():
        return
    try:
        asyncio.run_coroutine_threadsafe(client.aclose(timeout_s), loop).result(timeout_s + 1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
