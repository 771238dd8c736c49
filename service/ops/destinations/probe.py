"""The test button: one synthetic event sent to a destination, and the receiver's reply."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from service.events import new_event_id
from service.ops.destinations.formats import Item
from service.ops.destinations.safety import UnsafeDestination
from service.ops.destinations.transports import DeliveryError, make_sender
from service.store.destinations import Destination

TEST_ACTION = "destination.test"


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the receiver made of the synthetic event."""

    delivered: bool
    event_id: str
    status: int | None  # the receiver's HTTP status (None for syslog, or when it was not reached)
    reply: str  # the receiver's answer (its body), or why it was not delivered
    error: str | None


def synthetic_item(destination: Destination, actor: str) -> dict[str, Any]:
    """A synthetic item in the stored shape: action `destination.test`, never stored."""
    now = datetime.now(UTC)
    return {
        "id": new_event_id(),
        "ts": now,
        "action": TEST_ACTION,
        "category": "destination",
        "severity": "info",
        "outcome": "success",
        "actor": {"id": actor, "type": "api_token", "name": actor},
        "entity": {"type": "destination", "id": destination.name},
        "tenant": None,
        "request": None,
        "changes": None,
        "metadata": {"test": True, "destination": destination.name},
        "presentation": {"code": "audit.destination.test", "params": {}},
        "source": "auditq",
        "received_at": now,
        "received_via": "api",
    }


async def send_test(destination: Destination, secret: str | None, *, actor: str) -> TestResult:
    """Send one synthetic event the way deliveries go (format, signature, transport)."""
    item = Item.of(synthetic_item(destination, actor))
    event_id = item.id
    try:
        sender = make_sender(destination, secret)
    except UnsafeDestination as exc:
        return TestResult(delivered=False, event_id=event_id, status=None, reply="", error=str(exc))
    try:
        reply = await sender.send([item])
    except DeliveryError as exc:
        return TestResult(
            delivered=False, event_id=event_id, status=exc.status, reply=exc.reply, error=str(exc)
        )
    finally:
        await sender.close()
    return TestResult(
        delivered=True, event_id=event_id, status=reply.status, reply=reply.body, error=None
    )
