"""Admin routes over tasks and the queue: list, inspect, retry, clean up, stats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from service.api import body as json_body
from service.api.errors import ApiError, bad_parameter
from service.api.inputs import read_query
from service.api.openapi import operation
from service.api.producers import PROVENANCE_KEY
from service.api.state import REDIS, SETTINGS, record_admin_action
from service.events import Entity
from service.ops import task_actions
from service.ops.queue_stats import QueueStats, Throughput, queue_stats, throughput
from service.ops.task_model import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CleanupPolicy,
    CleanupResult,
    FailedAttempt,
    InvalidCursor,
    Kind,
    RetryFilter,
    Status,
    Task,
    TaskChanged,
    TaskDetail,
    TaskNotFailed,
    TaskNotFound,
    TaskPage,
)
from service.ops.tasks import TaskQueue
from service.queue import dead_letter

_DEFAULT_FILTER = RetryFilter()


class TaskDiscarded(msgspec.Struct, frozen=True, kw_only=True):
    """The task as it was when it was discarded."""

    task: Task


def _not_discardable(task_id: str, status: str) -> str:
    return f"task {task_id} is {status}; only a failed task can be discarded"


@contextmanager
def _task_errors(task_id: str, not_failed: Callable[[TaskNotFailed], str]) -> Iterator[None]:
    """A task action's refusals as the API's answers: 404, or 409 with `not_failed`'s words."""
    try:
        yield
    except TaskNotFound:
        raise ApiError(404, "not_found", f"no task {task_id}") from None
    except TaskNotFailed as exc:
        raise ApiError(409, "task_not_failed", not_failed(exc)) from None
    except TaskChanged as exc:
        raise ApiError(409, "task_changed", str(exc)) from None


async def _filter(request: web.Request) -> tuple[RetryFilter, dict[str, Any]]:
    """A bulk action's filter (all failed tasks when the body is empty), and as recorded."""
    where = await json_body.read_json(request, RetryFilter, default=_DEFAULT_FILTER)
    return where, msgspec.to_builtins(where)


_DEFAULT_POLICY = CleanupPolicy()


class RetryAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """A retried task, queued again under its id."""

    task: Task


class BulkRetryAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """How many failed tasks were queued again."""

    retried: int


class CleanupDone(msgspec.Struct, frozen=True, kw_only=True):
    """How many tasks a cleanup deleted, per status."""

    deleted: CleanupResult


def _tasks(request: web.Request) -> TaskQueue:
    tasks = TaskQueue.from_settings(request.app[REDIS], request.app[SETTINGS])
    tasks.provenance_key = request.app.get(PROVENANCE_KEY)
    return tasks


# Paths of their own beside /tasks/{id}: no task is looked up by these names.
_NOT_TASK_IDS = ("cleanup", "retry-failed", "count-failed", "discard-failed")


class TaskId(msgspec.Struct, frozen=True, kw_only=True):
    """The path of one task."""

    id: Annotated[str, msgspec.Meta(extra_json_schema={"not": {"enum": list(_NOT_TASK_IDS)}})]


class TaskListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The filters and page of a task listing."""

    status: Status | None = None
    kind: Kind | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    cursor: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=1024,
                pattern="^[A-Za-z0-9_-]+$",
                description="next_cursor of the previous page, as is",
            ),
        ]
        | None
    ) = None


@operation(
    summary="List tasks: the queue by due time, then failed and complete ones, newest first",
    query=TaskListQuery,
    responses={200: TaskPage},
)
async def list_tasks(request: web.Request) -> web.Response:
    """List tasks, filtered by status and kind, one page at a time."""
    query = read_query(TaskListQuery, request.query)
    try:
        page = await _tasks(request).page(
            status=query.status, kind=query.kind, limit=query.limit, cursor=query.cursor
        )
    except InvalidCursor as exc:
        raise bad_parameter("cursor", f"is invalid: {exc}") from None
    return json_body.json_response(page)


@operation(
    summary="One task and its payload (redacted events)",
    path=TaskId,
    responses={200: TaskDetail},
    errors=(405,),  # GET on cleanup or retry-failed: those paths take POST only
)
async def get_task(request: web.Request) -> web.Response:
    """Show one task with its payload."""
    task_id = request.match_info["id"]
    task = await _tasks(request).get(task_id)
    if task is None:
        raise ApiError(404, "not_found", f"no task {task_id}")
    kept = await dead_letter.history(request.app[REDIS], request.app[SETTINGS].queue, task_id)
    failures = [
        FailedAttempt(
            failed_at=datetime.fromtimestamp(f.failed_at_ms / 1000, UTC),
            error_name=f.error_name,
            classification=f.classification,
            attempts=f.attempts,
        )
        for f in kept
    ]
    return json_body.json_response(msgspec.structs.replace(task, failures=failures))


@operation(
    summary="Retry a failed task: its events are queued again under the same id",
    path=TaskId,
    responses={202: RetryAccepted},
    errors=(409,),
)
async def retry_task(request: web.Request) -> web.Response:
    """Queue a failed task's events again and drop its dead letter."""
    task_id = request.match_info["id"]

    async def record(event_count: int) -> None:  # once the task is known failed, before
        await record_admin_action(
            request,
            "task.retried",
            entity=Entity(type="task", id=task_id[:1024]),
            metadata={"event_count": event_count},
        )

    with _task_errors(task_id, str):
        task = await task_actions.retry(_tasks(request), task_id, record=record)
    return json_body.json_response(RetryAccepted(task=task), status=202)


@operation(
    summary="Discard a failed task that can never succeed: its events are dropped for good",
    path=TaskId,
    responses={200: TaskDiscarded},
    errors=(409,),
)
async def discard_task(request: web.Request) -> web.Response:
    """Drop a failed task and its dead letter; the discard is audited first."""
    task_id = request.match_info["id"]
    task = await _tasks(request).get(task_id)
    if task is None:
        raise ApiError(404, "not_found", f"no task {task_id}")
    if task.status != "failed":
        raise ApiError(409, "task_not_failed", _not_discardable(task_id, task.status))
    # Recorded before the events go: a discard nobody can see would be a silent loss.
    failure = msgspec.to_builtins(task.failure) if task.failure else None
    await record_admin_action(
        request,
        "task.discarded",
        entity=Entity(type="task", id=task_id[:1024]),
        metadata={"event_count": task.event_count, "failure": failure},
    )
    with _task_errors(task_id, lambda exc: _not_discardable(task_id, exc.status)):
        discarded = await task_actions.discard(_tasks(request), task_id)
    return json_body.json_response(TaskDiscarded(task=discarded))


@operation(
    summary="Retry every failed task matching the filters (all when the body is empty)",
    body=RetryFilter,
    responses={202: BulkRetryAccepted},
)
async def retry_failed(request: web.Request) -> web.Response:
    """Queue the failed tasks that match the filters again."""
    where, filters = await _filter(request)
    await record_admin_action(request, "task.retried_bulk", metadata={"filters": filters})
    retried = await task_actions.retry_failed(_tasks(request), where)
    return json_body.json_response(BulkRetryAccepted(retried=retried), status=202)


class FailedMatching(msgspec.Struct, frozen=True, kw_only=True):
    """How many failed tasks a filter matches (what a bulk action would take)."""

    matching: int


class BulkDiscarded(msgspec.Struct, frozen=True, kw_only=True):
    """How many failed tasks were discarded."""

    discarded: int


@operation(
    summary="Count the failed tasks matching the filters (a bulk action's preview)",
    body=RetryFilter,
    responses={200: FailedMatching},
)
async def count_failed(request: web.Request) -> web.Response:
    """Count what a bulk retry or discard with these filters would take."""
    where, _ = await _filter(request)
    ids = await task_actions.matching_failed(_tasks(request), where)
    return json_body.json_response(FailedMatching(matching=len(ids)))


@operation(
    summary="Discard every failed task matching the filters: their events are dropped for good",
    body=RetryFilter,
    responses={200: BulkDiscarded},
)
async def discard_failed(request: web.Request) -> web.Response:
    """Drop the failed tasks that match the filters; the discard is audited first."""
    where, filters = await _filter(request)
    ids = await task_actions.matching_failed(_tasks(request), where)
    # Recorded before the events go, naming every task taken.
    await record_admin_action(
        request,
        "task.discarded_bulk",
        metadata={"filters": filters, "matching": len(ids), "task_ids": ids[:1000]},
    )
    discarded = await task_actions.discard_failed(_tasks(request), ids)
    return json_body.json_response(BulkDiscarded(discarded=discarded))


@operation(
    summary="Delete complete and failed tasks past their age (defaults: 365 d, 90 d, keep 100)",
    body=CleanupPolicy,
    responses={200: CleanupDone},
)
async def cleanup_tasks(request: web.Request) -> web.Response:
    """Delete old complete and failed tasks, keeping the most recent failures."""
    policy = await json_body.read_json(request, CleanupPolicy, default=_DEFAULT_POLICY)
    await record_admin_action(
        request, "task.cleanup", metadata={"policy": msgspec.to_builtins(policy)}
    )
    deleted = await task_actions.cleanup(_tasks(request), policy)
    return json_body.json_response(CleanupDone(deleted=deleted))


@operation(summary="Queue health: counts, lag, throughput, workers", responses={200: QueueStats})
async def get_queue_stats(request: web.Request) -> web.Response:
    """Show the queue's counts per status, oldest wait, events/s and workers."""
    return json_body.json_response(await queue_stats(_tasks(request)))


@operation(
    summary="Events stored per second, minute by minute, over the last 15 minutes",
    responses={200: Throughput},
)
async def get_queue_throughput(request: web.Request) -> web.Response:
    """Show the queue's recent throughput as a per-minute series (the console charts it)."""
    return json_body.json_response(
        await throughput(request.app[REDIS], request.app[SETTINGS].queue)
    )


ROUTES = [
    web.get("/api/v1/admin/tasks", list_tasks),
    web.post("/api/v1/admin/tasks/retry-failed", retry_failed),
    web.post("/api/v1/admin/tasks/cleanup", cleanup_tasks),
    # Not the fixed paths beside it: GET there is 405 (Allow: POST), not a lookup of a task.
    web.get(f"/api/v1/admin/tasks/{{id:(?!{'$|'.join(_NOT_TASK_IDS)}$)[^/]+}}", get_task),
    web.post("/api/v1/admin/tasks/{id}/retry", retry_task),
    web.post("/api/v1/admin/tasks/{id}/discard", discard_task),
    web.post("/api/v1/admin/tasks/count-failed", count_failed),
    web.post("/api/v1/admin/tasks/discard-failed", discard_failed),
    web.get("/api/v1/admin/queue/stats", get_queue_stats),
    web.get("/api/v1/admin/queue/throughput", get_queue_throughput),
]
