"""Admin routes of the transparency log: an event's receipt, the checkpoint, consistency."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from aiohttp import web

from service.api.audit_logs.pages import AuditLogId, event_id_of
from service.api.body import json_response
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import operation
from service.api.state import POOL
from service.store import tlog
from service.store.receipts import AwaitingCheckpoint, receipt_of

MAX_SIZE = (1 << 63) - 1


class Receipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An event's receipt (docs/integrity.md, "Receipts"): checkable offline."""

    item: dict[str, Any]
    leaf_index: int
    tree_size: int
    inclusion_proof: list[str]
    checkpoint: str
    erasures: list[dict[str, Any]] | None = None


class Consistency(msgspec.Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    """An RFC 6962 consistency proof between two tree sizes (base64 hashes)."""

    from_: int
    to: int
    proof: list[str]


@operation(path=AuditLogId, responses={200: Receipt}, errors=(404, 409))
async def get_proof(request: web.Request) -> web.Response:
    """An event's receipt, or 409 while its row awaits its first checkpoint."""
    event_id = event_id_of(request)
    async with request.app[POOL].acquire() as conn:
        try:
            receipt = await receipt_of(conn, event_id)
        except AwaitingCheckpoint as exc:
            raise ApiError(409, "awaiting_checkpoint", str(exc)) from None
        except tlog.TreeError as exc:
            raise ApiError(409, "log_incomplete", str(exc)) from None
    if receipt is None:
        raise ApiError(404, "not_found", f"no audit log has id {event_id}")
    return json_response(receipt)


@operation(
    summary="The latest signed checkpoint (C2SP tlog-checkpoint), with its cosignatures",
    responses={200: {"type": "string"}},
    media_types=("text/plain",),
    errors=(404,),
)
async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest checkpoint as a signed note, witnesses' cosignature lines appended."""
    async with request.app[POOL].acquire() as conn:
        head = await tlog.last_checkpoint(conn)
        signed = (
            None if head is None else await tlog.checkpoint_with_cosignatures(conn, head["size"])
        )
    if signed is None:
        raise ApiError(404, "no_checkpoint", "no checkpoint has been signed yet")
    return web.Response(text=signed, content_type="text/plain", charset="utf-8")


def _size(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) > MAX_SIZE:
        raise bad_parameter(name, "must be a tree size (a whole number from 0)")
    return int(text)


@operation(
    summary="An RFC 6962 consistency proof between two tree sizes (?from=N&to=M)",
    description="`from` defaults to 0, `to` to the latest checkpoint's size.",
    responses={200: Consistency},
    errors=(400, 409),
)
async def get_consistency(request: web.Request) -> web.Response:
    """The consistency proof from tree size `from` to `to` (both up to the latest checkpoint)."""
    async with request.app[POOL].acquire() as conn:
        head = await tlog.last_checkpoint(conn)
        signed = 0 if head is None else int(head["size"])
        old, new = _size(request, "from", 0), _size(request, "to", signed)
        if old > new:
            raise bad_parameter("from", f"must not exceed `to` ({new})")
        if new > signed:
            raise bad_parameter("to", f"must not exceed the latest checkpoint's size ({signed})")
        try:
            proof = await tlog.Tree(conn).consistency_proof(old, new)
        except tlog.TreeError as exc:
            raise ApiError(409, "log_incomplete", str(exc)) from None
    encoded = [base64.b64encode(h).decode() for h in proof]
    return json_response(Consistency(from_=old, to=new, proof=encoded))


ROUTES = [
    web.get("/api/v1/admin/audit-logs/{id:[^/]+}/proof", get_proof),
    web.get("/api/v1/admin/integrity/checkpoint", get_checkpoint),
    web.get("/api/v1/admin/integrity/consistency", get_consistency),
]
