"""The failure line: one ERROR line per event that could not be enqueued, with a stable prefix."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Final

import msgspec

from service.errors import AuditqError
from service.producer.context import AuditContext
from service.redaction import redact_sensitive_in_string

FAILURE_PREFIX: Final = "[AuditLog] Failed to queue audit event: "
FAILURE_FIELD_MAX_CHARS = 256  # characters: a hostile value must not flood the log
FAILURE_MESSAGE_MAX_CHARS = 1024  # characters

failure_logger = logging.getLogger("auditq")  # the contract's logger name, not the module's


class ClientClosed(AuditqError):
    """The client is closed: it enqueues nothing more."""


class BufferFull(AuditqError):
    """The client's buffer is full: the event was dropped."""


class NotReplicated(AuditqError):
    """The primary took the batch but too few replicas confirmed it in time (WAIT)."""


class SpoolFull(AuditqError):
    """Redis did not take the event and the spool is full: the event was dropped."""


class DeliveryUncertain(AuditqError):
    """The event's batch was sent and no answer came in time: it may still be stored.

    Not a failure to queue: resend the same event (same `id`, stored once), never a new one.
    """


def log_failure(
    event: object,
    exc: BaseException,
    context: AuditContext | None,
    extra_keys: frozenset[str] = frozenset(),
) -> None:
    """Write the failure line of `event`: the prefix, then one JSON object, no stack trace."""
    payload = failure_payload(event, exc, context, extra_keys)
    failure_logger.error(
        "%s%s", FAILURE_PREFIX, json.dumps(payload), extra={"audit_failure": payload}
    )


def failure_payload(
    event: object,
    exc: BaseException,
    context: AuditContext | None = None,
    extra_keys: frozenset[str] = frozenset(),
) -> dict[str, str | None]:
    """Describe a failed event for the failure line, every value redacted."""
    actor = _get(event, "actor")
    entity = _get(event, "entity")
    user_id = _text(_get(actor, "id"))
    request_id = _text(_get(_get(event, "request"), "id"))
    if context is not None:
        context_actor = context.current_actor() if user_id is None else None
        if context_actor is not None:
            user_id = _text(context_actor.id)
        if request_id is None:
            request_id = _text(context.request_id)
    try:
        message = redact_sensitive_in_string(str(exc), extra_keys)
    except Exception:
        message = "[message withheld: it could not be redacted]"
    fields = {
        "action": _text(_get(event, "action")),
        "entityType": _text(_get(entity, "type")),
        "entityId": _text(_get(entity, "id")),
        "userId": user_id,
        "requestId": request_id,
    }
    payload = {
        name: None if value is None else redact_sensitive_in_string(value, extra_keys)
        for name, value in fields.items()
    }
    payload["errorName"] = type(exc).__name__
    payload["errorMessage"] = message[:FAILURE_MESSAGE_MAX_CHARS]
    return payload


def _get(value: object, name: str) -> object:
    """Read a field of an event-like value: a Struct (maybe unvalidated) or plain data."""
    if isinstance(value, Mapping):
        return value.get(name)
    if isinstance(value, msgspec.Struct):
        return getattr(value, name, None)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)[:FAILURE_FIELD_MAX_CHARS]
