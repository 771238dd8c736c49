"""Admin routes over integrity: seal status, and a verification run in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from service.api.auth import request_principal
from service.api.background import cancel_all
from service.api.body import json_response
from service.api.openapi import operation
from service.api.state import POOL, SETTINGS
from service.events import Actor, RequestInfo
from service.ops.admin_actions import record_admin_event
from service.ops.verification import run_verification
from service.own_events import API_SOURCE, admin_action, requested_by, token_actor
from service.store import tlog
from service.store.seals import last_verification, status

logger = logging.getLogger(__name__)

RUNNING = web.AppKey("integrity_runs", set[asyncio.Task[None]])
# What GET shows for a stored result that lacks the counts of a verification.
MALFORMED: dict[str, Any] = {
    "intact": False, "rows": 0, "checkpoints": 0, "actions": 0, "findings": 0,
    "removed_by_retention": 0, "anonymised": 0, "awaiting_seal": 0,
    "summary": "the stored result of this verification is incomplete", "lines": [],
}  # fmt: skip


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one verification (`auditq verify` or the API's)."""

    id: int
    started_at: datetime
    finished_at: datetime | None
    intact: bool
    rows: int
    checkpoints: int
    actions: int
    findings: int
    removed_by_retention: int
    anonymised: int
    awaiting_seal: int
    summary: str
    lines: list[str]  # findings and notes, the first 100


class WitnessStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a witness of AUDITQ_WITNESS_URLS last answered."""

    url: str
    last_cosigned_size: int | None
    last_error: str | None


class IntegrityStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the record is sealed, and what the last verification found."""

    last_sealed_at: datetime | None
    unsealed_rows: int
    last_verification: Verification | None
    verification_running: bool
    tree_size: int = 0  # leaves of the transparency log
    checkpoint: str | None = None  # the latest signed checkpoint (a C2SP note)
    witnesses: list[WitnessStatus] = []
    sealing_stopped: str | None = None  # why the sealer refuses to sign, while it does


class VerificationStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A verification runs; its result appears in GET /api/v1/admin/integrity."""

    state: str = "running"


@operation(summary="Seal status and the last verification", responses={200: IntegrityStatus})
async def get_integrity(request: web.Request) -> web.Response:
    """Show when rows were last sealed, how many wait, and the last verification."""
    async with request.app[POOL].acquire() as conn:
        seals = await status(conn)
        last = await last_verification(conn)
        log = await tlog.log_status(conn)
        witnesses = await tlog.witnesses(conn)
        signed = log["note"]
        if log["checkpoint_size"] is not None:
            signed = await tlog.checkpoint_with_cosignatures(conn, log["checkpoint_size"])
    verification = None
    if last is not None:
        result: dict[str, Any] = last["result"] if isinstance(last["result"], dict) else {}
        fields = {name: result.get(name) for name in Verification.__struct_fields__}
        fields.update(id=last["id"], started_at=last["started_at"], finished_at=last["finished_at"])
        try:
            verification = msgspec.convert(
                fields, Verification, from_attributes=False, strict=False
            )
        except msgspec.ValidationError:  # a result recorded without its counts: not intact
            verification = msgspec.convert(
                {**MALFORMED, "id": last["id"], "started_at": last["started_at"],
                 "finished_at": last["finished_at"]},
                Verification,
                from_attributes=False,
                strict=False,
            )  # fmt: skip
    return json_response(
        IntegrityStatus(
            last_sealed_at=seals["last_sealed_at"],
            unsealed_rows=int(seals["unsealed_rows"]),
            last_verification=verification,
            verification_running=any(not t.done() for t in request.app[RUNNING]),
            tree_size=int(log["tree_size"]),
            checkpoint=signed,
            witnesses=[
                WitnessStatus(
                    url=w["url"],
                    last_cosigned_size=w["last_cosigned_size"],
                    last_error=w["last_error"],
                )
                for w in witnesses
            ],
            sealing_stopped=tlog.stopped_reason(log),
        )
    )


@operation(
    summary="Verify every checkpoint and row in the background (audited as integrity.verified)",
    responses={202: VerificationStarted},
)
async def start_verification(request: web.Request) -> web.Response:
    """Start a verification unless one runs; its result appears in GET /api/v1/admin/integrity."""
    runs = request.app[RUNNING]
    if not any(not t.done() for t in runs):
        principal = request_principal(request)
        actor = token_actor(principal.name)
        origin = RequestInfo(ip=request.remote, method=request.method, path=request.path)
        task = asyncio.create_task(_verify(request.app, actor, origin))
        runs.add(task)
        task.add_done_callback(runs.discard)
    return json_response(VerificationStarted(), status=202)


async def _verify(app: web.Application, actor: Actor, origin: RequestInfo) -> None:
    # The result is kept with its integrity.verified event by the store (schema.sql).
    by = requested_by(actor, API_SOURCE, origin)
    try:
        await run_verification(app[SETTINGS], emit=lambda line: None, by=by)
    except Exception as exc:  # the API stands; the failure is recorded as the event alone
        logger.error("verification failed: %s: %s", type(exc).__name__, exc)
        event = msgspec.structs.replace(
            admin_action(
                "integrity.verified",
                actor=actor,
                source=API_SOURCE,
                request=origin,
                metadata={"intact": False, "error": f"{type(exc).__name__}: {exc}"},
            ),
            severity="critical",
            outcome="failure",
        )
        try:
            async with app[POOL].acquire() as conn:
                await record_admin_event(conn, event)
        except Exception as again:  # PostgreSQL away: the log line above is what remains
            logger.error("its outcome could not be kept: %s", type(again).__name__)


async def integrity_context(app: web.Application) -> AsyncIterator[None]:
    """Hold running verifications; cancel them when the API stops."""
    runs: set[asyncio.Task[None]] = set()
    app[RUNNING] = runs
    yield
    await cancel_all(runs)


ROUTES = [
    web.get("/api/v1/admin/integrity", get_integrity),
    web.post("/api/v1/admin/integrity/verify", start_verification),
]
