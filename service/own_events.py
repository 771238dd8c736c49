"""auditq's own audit events: who records them, and the events themselves.

Two kinds, both rows of the audit log like any producer's:
- lifecycle: `service.started` / `service.stopping`, buffered in the process's own client
  (`capture_nowait`: a busy start or stop must not wait out `capture`'s 250 ms, and the
  client's `aclose` flushes it);
- admin actions (contract §7): each mutation by the API or the CLI, written straight into
  PostgreSQL before it takes effect (service/ops/admin_actions.py writes them).
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import socket
from typing import Any, Final, Literal

import msgspec

from service.events import Actor, AuditEvent, Entity, RequestInfo

# The `source` of each of auditq's processes.
API_SOURCE: Final = "auditq-api"
WORKER_SOURCE: Final = "auditq-worker"
CLI_SOURCE: Final = "auditq-cli"

STARTED: Final = "service.started"
STOPPING: Final = "service.stopping"
LifecycleAction = Literal["service.started", "service.stopping"]

CLI_ACTOR = Actor(id="cli", type="system")


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


def admin_action(
    action: str,
    *,
    actor: Actor,
    source: str,
    entity: Entity | None = None,
    metadata: dict[str, Any] | None = None,
    request: RequestInfo | None = None,
) -> AuditEvent:
    """The audit event of one admin mutation."""
    return AuditEvent(
        action=action,
        severity="notice",
        actor=actor,
        entity=entity,
        request=request,
        metadata=metadata,
        source=source,
    )


def cli_actor() -> Actor:
    """The actor of the CLI's admin actions: the local user who ran the command."""
    return Actor(id="cli", type="system", name=f"cli:{getpass.getuser()}")


def token_actor(name: str) -> Actor:
    """The actor of the API's admin actions: the token that asked, by its name."""
    return Actor(id=name, type="api_token", name=name)


def requested_by(actor: Actor, source: str, request: RequestInfo | None = None) -> dict[str, Any]:
    """Who asked, as the token and verification functions of schema.sql record it."""
    by: dict[str, Any] = {"actor": msgspec.to_builtins(actor), "source": source}
    if request is not None:
        by["request"] = msgspec.to_builtins(request)
    return by


def system_by() -> dict[str, Any]:
    """Who asked when the caller does not say: the operator at this host's shell."""
    return requested_by(CLI_ACTOR, CLI_SOURCE)


def by_json(by: dict[str, Any] | None) -> str:
    """Who asked (`system_by()` when None) as the JSON the store's functions take."""
    return msgspec.json.encode(system_by() if by is None else by).decode()
