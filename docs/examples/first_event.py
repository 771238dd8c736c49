"""A first audit event, stored by the running stack (README, "Produce an event").

make run                                        # in one terminal: auditq and its servers
set -a; . .auditq/producer.env; set +a          # in another
.venv/bin/python docs/examples/first_event.py
"""

import asyncio

from service.client import AuditClient, AuditEvent
from service.events import Actor, Change, Entity
from service.settings import Settings


async def main() -> None:
    # AUDITQ_REDIS_URL (and AUDITQ_QUEUE, if set) from the environment.
    async with AuditClient.from_settings(Settings.from_env()) as client:
        event_id = await client.capture(  # the id once queued; None (and a log line) if not
            AuditEvent(
                action="project.renamed",
                severity="notice",
                actor=Actor(id="u-42", type="user", name="Ann"),
                entity=Entity(type="project", id="42"),
                changes=[Change(field="name", old="Apollo", new="Artemis")],
                metadata={"reason": "rebrand", "api_key": "k-123"},  # stored as "[REDACTED]"
            )
        )
        client.capture_nowait(AuditEvent(action="auth.login"))  # returns at once, batched
    print(f"stored as {event_id}")  # leaving `async with` sent what was buffered


asyncio.run(main())
