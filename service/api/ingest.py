"""HTTP ingest: producers in any language POST events; valid ones are queued, bad ones named."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from service.api import body as json_body
from service.api.auth import request_principal
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import operation
from service.api.producers import INGEST_CLIENTS
from service.api.state import SETTINGS
from service.errors import InvalidEvent
from service.event_faults import event_faults
from service.events import AuditEvent, convert_event, finalize
from service.redaction import redact_sensitive_in_string
from service.settings import Settings

MAX_BATCH_EVENTS = 1000


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """An event that was not queued, by its index in the request, and why."""

    index: int
    error: str


class IngestResult(msgspec.Struct, frozen=True, kw_only=True):
    """The ids of the queued events, and the events refused."""

    accepted: list[str]
    rejected: list[Rejection]


def _items(body: Any) -> list[Any]:
    """The events of a body: one event object, or {"events": [...]}."""
    if not isinstance(body, dict):
        raise ApiError(
            400, "invalid_body", 'send one event object, or {"events": [...]} with up to 1000'
        )
    if "events" not in body:  # an event has no `events` field: this is one event
        return [body]
    if len(body) != 1:
        extra = sorted(str(k) for k in body if k != "events")
        raise bad_parameter(extra[0], 'is not allowed beside `events`; send {"events": [...]}')
    items = body["events"]
    if not isinstance(items, list):
        raise bad_parameter("events", "must be a list of event objects")
    if len(items) > MAX_BATCH_EVENTS:
        raise ApiError(
            413,
            "payload_too_large",
            f"{len(items)} events in one request; send at most {MAX_BATCH_EVENTS}",
        )
    return items


# What the route takes: any object is one event, or {"events": [...]}. Each event is checked as
# an AuditEvent (components/schemas/AuditEvent) and an invalid one is answered in `rejected`
# with its index, not with a 400: so the body's schema does not hold the event's.
_EVENT = {
    "type": "object",
    "description": "an event: see AuditEvent; an invalid one is listed in `rejected`",
}
INGEST_BODY = {
    "anyOf": [
        _EVENT | {"not": {"required": ["events"]}},
        {
            "type": "object",
            "properties": {
                "events": {
                    "type": "array",
                    "maxItems": MAX_BATCH_EVENTS,
                    "items": {"description": _EVENT["description"]},  # a non-object too
                }
            },
            "required": ["events"],
            "additionalProperties": False,
        },
    ]
}


@operation(
    summary="Ingest one event or {events: [...]} (up to 1000); role ingest or admin",
    body=INGEST_BODY,
    body_required=True,
    responses={202: IngestResult, 400: IngestResult},
    types=(AuditEvent,),
)
async def ingest_events(request: web.Request) -> web.Response:
    """Queue the valid events of the request and name the invalid ones."""
    items = _items(json_body.any_json(await json_body.read_body(request) or b""))
    settings = request.app[SETTINGS]
    valid: list[AuditEvent] = []
    valid_index: list[int] = []
    rejected: list[Rejection] = []
    first_of_id: dict[Any, int] = {}  # an id twice in one request: the first copy is stored
    copies: dict[int, int] = {}  # index of a later copy -> position of the first in `valid`
    for index, item in enumerate(items):
        try:
            event, _ = finalize(
                convert_event(item),
                extra_keys=settings.redact_extra_keys,
                max_bytes=settings.max_event_bytes,
                max_future_s=settings.max_future_s,
            )
        except InvalidEvent as exc:
            rejected.append(Rejection(index=index, error=_faults(item, exc, settings)))
            continue
        if event.id in first_of_id:
            copies[index] = first_of_id[event.id]
            continue
        first_of_id[event.id] = len(valid)
        valid.append(event)
        valid_index.append(index)
    client = request.app[INGEST_CLIENTS].client(request_principal(request).name)
    ids = await asyncio.gather(*(client.capture(event) for event in valid))
    if any(event_id is None for event_id in ids):
        # Never claim an event is accepted when neither the queue nor the API's spool took it
        # (a spooled event is accepted: it will be delivered). Some of the batch may be
        # queued: resent with the ids given here, each event is stored once.
        given = {index: str(event.id) for index, event in zip(valid_index, valid, strict=True)}
        raise ApiError(
            503,
            "dependency_unavailable",
            "the queue (Redis) did not take the events; send them again with the ids in `ids`",
            extra={
                "ids": [given.get(index) for index in range(len(items))],
                "rejected": msgspec.to_builtins(rejected),
            },
        )
    accepted = [str(i) for i in ids] + [str(ids[position]) for position in copies.values()]
    result = IngestResult(accepted=accepted, rejected=rejected)
    # 202 once anything was taken; 400 (same body) when nothing of the request was.
    return json_body.json_response(result, status=202 if accepted else 400)


def _faults(item: Any, exc: InvalidEvent, settings: Settings) -> str:
    """Every fault of a refused event in plain words; redacted: they quote bad values."""
    faults = event_faults(item) or [str(exc)]  # past the wire format: ts ahead, size
    return redact_sensitive_in_string("; ".join(faults), settings.redact_extra_keys)


ROUTES = [web.post("/api/v1/events", ingest_events)]
