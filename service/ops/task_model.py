"""The task model: what admins see of one job of the queue, and the options of the commands."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from service.errors import AuditqError

Status = Literal["queued", "in_progress", "retrying", "failed", "complete"]
STATUSES: tuple[Status, ...] = ("queued", "in_progress", "retrying", "failed", "complete")
Kind = Literal["events", "maintenance"]
KINDS: tuple[Kind, ...] = ("events", "maintenance")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class TaskNotFound(AuditqError):
    """No task has this id (or it expired)."""


class TaskNotFailed(AuditqError):
    """Only a failed task can be retried."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is {status}; only a failed task can be retried")
        self.status = status


class TaskChanged(AuditqError):
    """The task changed while it was being retried (retried or failed again meanwhile)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} changed while it was being retried; look and try again")


class InvalidCursor(AuditqError):
    """A cursor that no page of this listing handed out."""


class TaskFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a task failed; the message is redacted."""

    error_name: str
    message: str
    classification: str  # data · unknown · invalid


class TaskPresentation(msgspec.Struct, frozen=True, kw_only=True):
    """Sentences a dashboard shows as they are."""

    title: str
    status_message: str
    detail_message: str


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One job of the queue, whatever state it is in."""

    id: str
    kind: str
    status: Status
    attempts: int
    max_attempts: int
    event_count: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    failure: TaskFailure | None
    presentation: TaskPresentation


class FailedAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One failed run of a task: when, what, and the attempt count it reached."""

    failed_at: datetime
    error_name: str
    classification: str
    attempts: int


class TaskDetail(Task, frozen=True, kw_only=True):
    """A task and its payload: the events (redacted), or the raw text when it is not JSON."""

    payload: Any
    # Every failure kept for the task, oldest first, across retries (the latest 50).
    failures: list[FailedAttempt] = []


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of tasks; pass next_cursor back for the next (null: no more)."""

    items: list[Task]
    next_cursor: str | None


class StatusCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How many tasks are in each status."""

    queued: int
    in_progress: int
    retrying: int
    failed: int
    complete: int


class RetryFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which failed tasks a bulk retry takes (all when empty); times bound the failure time."""

    classification: Literal["data", "unknown", "invalid"] | None = None
    error_name: str | None = None
    older_than: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    newer_than: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None  # at most this many tasks


Days = Annotated[int, msgspec.Meta(ge=0, le=36_500)]


class CleanupPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a cleanup deletes: TestPlanIt keeps complete jobs a year and failed ones 90 days."""

    complete_older_than_days: Days = 365
    failed_older_than_days: Days = 90
    # The most recent failed tasks are kept whatever their age: evidence of the last incident.
    keep_recent_failed: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 100


class CleanupResult(msgspec.Struct, frozen=True, kw_only=True):
    """How many tasks a cleanup deleted."""

    complete: int
    failed: int
