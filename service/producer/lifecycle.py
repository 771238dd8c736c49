"""auditq's own lifecycle in its audit log: `service.started` and `service.stopping`."""

from __future__ import annotations

import importlib.metadata
import os
import socket
from typing import Any, Final, Literal

from service.events import Actor, AuditEvent, Entity
from service.producer.client import AuditClient

API_SOURCE: Final = "auditq-api"
WORKER_SOURCE: Final = "auditq-worker"
STARTED: Final = "service.started"
STOPPING: Final = "service.stopping"

LifecycleAction = Literal["service.started", "service.stopping"]


def _version() -> str:
    try:
        return importlib.metadata.version("auditq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # run from a source tree that was never installed


VERSION: Final = _version()


def lifecycle_event(action: LifecycleAction, *, source: str, **metadata: Any) -> AuditEvent:
    """Describe this process starting or stopping, as the system actor `source`."""
    return AuditEvent(
        action=action,
        actor=Actor(id=source, type="system", name=source),
        entity=Entity(type="service", id=source),
        metadata={"host": socket.gethostname(), "pid": os.getpid(), "version": VERSION, **metadata},
        source=source,
    )


def record_lifecycle(
    client: AuditClient, action: LifecycleAction, *, source: str, **metadata: Any
) -> None:
    """Buffer a lifecycle event in `client`; never block, never raise.

    Not `capture`: its bound (250 ms) is for requests, and a busy start or stop must not
    lose the event. The client sends it at once, and its `aclose` flushes it.
    """
    client.capture_nowait(lifecycle_event(action, source=source, **metadata))
