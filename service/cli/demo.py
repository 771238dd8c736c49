"""Demo traffic for `auditq run --demo`: a plausible mix of what services record."""

from __future__ import annotations

import asyncio
import random

from service.events import Actor, AuditEvent, Change, Entity, RequestInfo
from service.producer.client import AuditClient
from service.settings import Settings

DEMO_RATE = 20.0  # events per second
USERS = [("u-1001", "Ada Lovelace"), ("u-1002", "Grace Hopper"), ("u-1003", "Alan Turing")]
ACTIONS = [
    ("auth.login", "info", None),
    ("auth.login_failed", "warning", None),
    ("project.created", "notice", "project"),
    ("project.settings.updated", "info", "project"),
    ("user.role.changed", "critical", "user"),
    ("api_key.rotated", "notice", "api_key"),
    ("export.downloaded", "info", "report"),
]


def demo_event(rng: random.Random) -> AuditEvent:
    """Make one realistic event."""
    user_id, name = rng.choice(USERS)
    action, severity, entity_type = rng.choice(ACTIONS)
    entity = Entity(type=entity_type, id=str(rng.randint(1, 50))) if entity_type else None
    changes = None
    if action.endswith("updated") or action.endswith("changed"):
        changes = [Change(field="role", old="member", new=rng.choice(["admin", "viewer"]))]
    return AuditEvent(
        action=action,
        severity=severity,  # type: ignore[arg-type]
        outcome="failure" if action.endswith("failed") else "success",
        actor=Actor(id=user_id, type="user", name=name),
        entity=entity,
        tenant=rng.choice(["acme", "globex"]),
        request=RequestInfo(
            id=f"req-{rng.getrandbits(48):012x}",
            ip=f"203.0.113.{rng.randint(1, 254)}",
            user_agent="Mozilla/5.0 (demo)",
            method="POST",
            path="/api/demo",
            status=401 if action.endswith("failed") else 200,
        ),
        changes=changes,
        metadata={"demo": True, "api_key": "sk-demo-never-stored"},
        source="auditq-demo",
    )


async def feed(settings: Settings) -> None:
    """Capture demo events at DEMO_RATE until cancelled."""
    rng = random.Random()
    client = AuditClient.from_settings(settings)
    try:
        while True:
            client.capture_nowait(demo_event(rng))
            await asyncio.sleep(1 / DEMO_RATE)
    finally:
        await client.aclose()
        # What the demo was told: accepted (queued or spooled, so it will be stored) or not.
        accepted = client.sent + client.spooled
        refused = client.failed + client.uncertain + client.dropped + client.spool_dropped
        print(f"demo: {accepted} events accepted, {refused} not", flush=True)
