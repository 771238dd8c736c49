"""`auditq emit`: send one audit event from the shell."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from service.cli.common import add_command, require_urls
from service.errors import ConfigError
from service.settings import Settings


async def cmd_emit(settings: Settings, args: argparse.Namespace) -> int:
    from service.events import AuditEvent
    from service.producer.client import AuditClient

    data: dict[str, Any] = msgspec.json.decode(args.json) if args.json else {}
    if not isinstance(data, dict):
        raise ConfigError("--json must be one JSON object")
    if args.action:
        data["action"] = args.action
    for name in ("severity", "outcome", "tenant", "source"):
        if getattr(args, name):
            data[name] = getattr(args, name)
    if args.actor:
        data["actor"] = {"id": args.actor, "type": "user"}
    if args.entity:
        entity_type, _, entity_id = args.entity.partition(":")
        if not entity_id:
            raise ConfigError("--entity must be TYPE:ID, e.g. project:42")
        data["entity"] = {"type": entity_type, "id": entity_id}
    if args.metadata:
        data["metadata"] = msgspec.json.decode(args.metadata)
    try:
        event = msgspec.convert(data, AuditEvent)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid event: {exc}") from None
    client = AuditClient.from_settings(require_urls(settings))
    try:
        event_id = await client.capture(event)
    finally:
        await client.aclose()
    if event_id is None:
        print("auditq: the event could not be queued (see the log line above)", file=sys.stderr)
        return 1
    print(event_id)
    return 0


def add_parsers(sub: Any) -> None:
    """Add `emit` to the `auditq` subcommands."""
    help_text = "Send one audit event from the shell; prints its id."
    emit = add_command(sub, "emit", cmd_emit, help_text)
    emit.add_argument("action", nargs="?", help="e.g. config.updated")
    emit.add_argument("--actor", help="actor id (a user)")
    emit.add_argument("--entity", help="TYPE:ID, e.g. project:42")
    emit.add_argument("--severity", choices=["info", "notice", "warning", "critical"])
    emit.add_argument("--outcome", choices=["success", "failure"])
    emit.add_argument("--tenant")
    emit.add_argument("--source")
    emit.add_argument("--metadata", help="a JSON object")
    emit.add_argument("--json", help="the whole event as JSON (flags override its fields)")
