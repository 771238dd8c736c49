"""Admin routes over data subjects: erase one (contract §9), and see where that stands."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from aiohttp import web

from service.api.auth import request_principal
from service.api.background import cancel_all
from service.api.body import read_json
from service.api.errors import ApiError
from service.api.inputs import read_query
from service.api.openapi import operation
from service.api.state import POOL, REDIS, SETTINGS, unrecorded
from service.events import RequestInfo
from service.ops import subjects
from service.ops.admin_actions import RECORD_FAILURES, unwritable
from service.own_events import API_SOURCE, requested_by, token_actor

logger = logging.getLogger(__name__)

MAX_ERASURES = 1000
DEFAULT_ERASURES = 100
RUNS = web.AppKey("subject_runs", dict[str, "asyncio.Task[None]"])  # pseudonym -> its run


class AnonymiseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why the subject is erased (kept in the audit event, cleared of the subject's values)."""

    reason: str | None = None


class AnonymiseStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The erasure runs; GET …/anonymisation shows where it stands."""

    pseudonym: str


def _subject_id(request: web.Request) -> str:
    try:
        return subjects.check_subject_id(request.match_info["subject_id"])
    except subjects.InvalidSubject as exc:
        raise ApiError(400, "invalid_parameter", f"parameter `subject_id`: {exc}") from None


@operation(
    summary="Pseudonymise one data subject everywhere (audited as subject.anonymised)",
    body=AnonymiseRequest,
    responses={202: AnonymiseStarted},
    errors=(400, 413, 415),
)
async def anonymise_subject(request: web.Request) -> web.Response:
    """Start erasing the subject unless that runs already; answer with its pseudonym."""
    subject_id = _subject_id(request)
    body = await read_json(request, AnonymiseRequest, default=AnonymiseRequest())
    try:
        reason = subjects.check_reason(body.reason)
    except subjects.InvalidSubject as exc:
        raise ApiError(400, "invalid_parameter", f"parameter `reason`: {exc}") from None
    app = request.app
    name = subjects.pseudonym_of(app[SETTINGS], subject_id)
    try:  # registered before the answer: GET says "running", workers pseudonymise at once
        async with app[POOL].acquire() as conn:
            await subjects.register(conn, app[REDIS], app[SETTINGS].queue, name)
    except RECORD_FAILURES as exc:
        raise unrecorded(unwritable("subject.anonymised", exc)) from None
    runs = app[RUNS]
    if name not in runs:
        principal = request_principal(request)
        actor = token_actor(principal.name)
        # The path holds the subject id: the event names the pseudonym instead.
        path = f"/api/v1/admin/subjects/{name}/anonymise"
        origin = RequestInfo(ip=request.remote, method=request.method, path=path)
        by = requested_by(actor, API_SOURCE, origin)
        task = asyncio.create_task(_run(app, subject_id, reason, by))
        runs[name] = task
        task.add_done_callback(lambda _: runs.pop(name, None))
    return web.Response(
        body=msgspec.json.encode(AnonymiseStarted(pseudonym=name)),
        status=202,
        content_type="application/json",
    )


async def _run(
    app: web.Application, subject_id: str, reason: str | None, by: dict[str, Any]
) -> None:
    try:  # the store records every step and the subject.anonymised event itself
        await subjects.anonymise(
            app[POOL], app[REDIS], app[SETTINGS], subject_id, reason=reason, wait=True, by=by
        )
    except Exception as exc:  # the state stays "running"; asking again resumes
        logger.error("erasure failed: %s (ask again to resume)", type(exc).__name__)


@operation(
    summary="Where the erasure of one subject stands",
    responses={200: subjects.Anonymisation},
    errors=(400, 404),
)
async def get_anonymisation(request: web.Request) -> web.Response:
    """Show the state and counts of the subject's erasure; 404 if it was never asked."""
    subject_id = _subject_id(request)
    async with request.app[POOL].acquire() as conn:
        found = await subjects.state(conn, request.app[SETTINGS], subject_id)
    if found is None:
        raise ApiError(404, "not_found", "this subject was never anonymised")
    return web.Response(body=msgspec.json.encode(found), content_type="application/json")


class ErasuresQuery(msgspec.Struct, frozen=True, kw_only=True):
    """How many erasures to list."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_ERASURES)] = DEFAULT_ERASURES


@operation(
    summary="The erasures asked, the latest first (admins only)",
    query=ErasuresQuery,
    responses={200: subjects.Erasures},
    errors=(400,),
    description="By pseudonym only: the store never holds a subject's id. Admins only, as "
    "every subjects route: who was erased when is not a reader's business.",
)
async def list_erasures(request: web.Request) -> web.Response:
    """List past and running erasures: pseudonym, state, when asked and done, rows changed."""
    query = read_query(ErasuresQuery, request.query)
    async with request.app[POOL].acquire() as conn:
        found = await subjects.erasures(conn, query.limit)
    return web.Response(body=msgspec.json.encode(found), content_type="application/json")


async def subjects_context(app: web.Application) -> AsyncIterator[None]:
    """Hold running erasures; cancel them when the API stops (asking again resumes)."""
    app[RUNS] = {}
    yield
    await cancel_all(app[RUNS].values())


ROUTES = [
    web.get("/api/v1/admin/subjects", list_erasures),
    web.post("/api/v1/admin/subjects/{subject_id:.+}/anonymise", anonymise_subject),
    web.get("/api/v1/admin/subjects/{subject_id:.+}/anonymisation", get_anonymisation),
]
