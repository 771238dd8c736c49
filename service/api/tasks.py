"""Admin routes over tasks and the queue: list, inspect, retry, clean up, stats."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from service.api import body as json_body
from service.api.errors import ApiError, bad_parameter
from service.api.openapi import Param, operation
from service.api.state import REDIS, SETTINGS, record_admin_action
from service.events import Entity
from service.ops import task_actions
from service.ops.queue_stats import QueueStats, Throughput, queue_stats, throughput
from service.ops.task_model import (
    DEFAULT_LIMIT,
    KINDS,
    MAX_LIMIT,
    STATUSES,
    CleanupPolicy,
    CleanupResult,
    InvalidCursor,
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

_STATUS: dict[str, Status] = {status: status for status in STATUSES}
_DEFAULT_FILTER = RetryFilter()
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
    return TaskQueue.from_settings(request.app[REDIS], request.app[SETTINGS])


def _list_query(request: web.Request) -> tuple[Status | None, str | None, int, str | None]:
    query = request.query
    raw_status = query.get("status") or None
    status = _STATUS.get(raw_status or "")
    if raw_status is not None and status is None:
        raise bad_parameter("status", f"must be one of {', '.join(STATUSES)}")
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise bad_parameter("kind", f"must be one of {', '.join(KINDS)}")
    raw_limit = query.get("limit", "")
    limit = DEFAULT_LIMIT
    if raw_limit:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise bad_parameter("limit", f"must be an integer, not {raw_limit[:40]!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise bad_parameter("limit", f"must be between 1 and {MAX_LIMIT}")
    return status, kind, limit, query.get("cursor") or None


@operation(
    summary="List tasks: the queue by due time, then failed and complete ones, newest first",
    query=(
        Param("status", {"enum": list(STATUSES)}),
        Param("kind", {"enum": list(KINDS)}),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}),
        Param("cursor", {"type": "string"}, "next_cursor of the previous page"),
    ),
    responses={200: TaskPage},
)
async def list_tasks(request: web.Request) -> web.Response:
    """List tasks, filtered by status and kind, one page at a time."""
    status, kind, limit, cursor = _list_query(request)
    try:
        page = await _tasks(request).page(status=status, kind=kind, limit=limit, cursor=cursor)
    except InvalidCursor as exc:
        raise bad_parameter("cursor", f"is invalid: {exc}") from None
    return json_body.json_response(page)


@operation(summary="One task and its payload (redacted events)", responses={200: TaskDetail})
async def get_task(request: web.Request) -> web.Response:
    """Show one task with its payload."""
    task_id = request.match_info["id"]
    task = await _tasks(request).get(task_id)
    if task is None:
        raise ApiError(404, "not_found", f"no task {task_id}")
    return json_body.json_response(task)


@operation(
    summary="Retry a failed task: its events are queued again under the same id",
    responses={202: RetryAccepted},
    errors=(409,),
)
async def retry_task(request: web.Request) -> web.Response:
    """Queue a failed task's events again and drop its dead letter."""
    task_id = request.match_info["id"]
    try:
        task = await task_actions.retry(_tasks(request), task_id)
    except TaskNotFound:
        raise ApiError(404, "not_found", f"no task {task_id}") from None
    except TaskNotFailed as exc:
        raise ApiError(409, "task_not_failed", str(exc)) from None
    except TaskChanged as exc:
        raise ApiError(409, "task_changed", str(exc)) from None
    await record_admin_action(
        request,
        "task.retried",
        entity=Entity(type="task", id=task_id[:1024]),
        metadata={"event_count": task.event_count},
    )
    return json_body.json_response(RetryAccepted(task=task), status=202)


@operation(
    summary="Retry every failed task matching the filters (all when the body is empty)",
    body=RetryFilter,
    responses={202: BulkRetryAccepted},
    errors=(415,),
)
async def retry_failed(request: web.Request) -> web.Response:
    """Queue the failed tasks that match the filters again."""
    where = await json_body.read_json(request, RetryFilter, default=_DEFAULT_FILTER)
    retried = await task_actions.retry_failed(_tasks(request), where)
    filters: dict[str, Any] = msgspec.to_builtins(where)
    await record_admin_action(
        request, "task.retried_bulk", metadata={"filters": filters, "retried": retried}
    )
    return json_body.json_response(BulkRetryAccepted(retried=retried), status=202)


@operation(
    summary="Delete complete and failed tasks past their age (defaults: 365 d, 90 d, keep 100)",
    body=CleanupPolicy,
    responses={200: CleanupDone},
    errors=(415,),
)
async def cleanup_tasks(request: web.Request) -> web.Response:
    """Delete old complete and failed tasks, keeping the most recent failures."""
    policy = await json_body.read_json(request, CleanupPolicy, default=_DEFAULT_POLICY)
    deleted = await task_actions.cleanup(_tasks(request), policy)
    await record_admin_action(
        request,
        "task.cleanup",
        metadata={"policy": msgspec.to_builtins(policy), "deleted": msgspec.to_builtins(deleted)},
    )
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
    web.get("/api/v1/admin/tasks/{id}", get_task),
    web.post("/api/v1/admin/tasks/{id}/retry", retry_task),
    web.get("/api/v1/admin/queue/stats", get_queue_stats),
    web.get("/api/v1/admin/queue/throughput", get_queue_throughput),
]
