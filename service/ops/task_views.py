"""How a task reads: Task values built from what Redis holds, with their English sentences."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.ops.task_model import Status, Task, TaskDetail, TaskFailure, TaskPresentation
from service.policy import MAX_ATTEMPTS
from service.queue import dead_letter
from service.queue.jobs import JOB_FUNCTION, joined_segments
from service.redaction import redact_escapes, redact_sensitive, redact_sensitive_in_string

_KIND_OF_FUNCTION = {JOB_FUNCTION: "events", "maintain": "maintenance"}

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()


def count_events(text: str | bytes) -> int:
    """Count the events of a job's payload without decoding them: a list's length, else 1 or 0."""
    try:
        return len(_raw_list.decode(text))
    except msgspec.ValidationError:  # valid JSON so far, but not a list: one (maybe bad) event
        pass
    except (msgspec.DecodeError, RecursionError):  # RecursionError: hostile nesting
        return 0
    try:
        _any.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return 0
    return 1


def redacted_payload(text: str | bytes, extra_keys: frozenset[str] = frozenset()) -> Any:
    """The events of a payload, redacted; the redacted text itself when it is not JSON."""
    try:
        redacted = redact_sensitive(_any.decode(text), extra_keys)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: hostile nesting
        raw = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return redact_sensitive_in_string(raw, extra_keys)
    # A string may hold escapes as written (JSON in a field): read too.
    marked = b"\\" in text if isinstance(text, bytes) else "\\" in text
    return redact_escapes(redacted, extra_keys) if marked else redacted


def at(ms: int | float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def seconds(ms: float) -> str:
    seconds = max(0, math.ceil(ms / 1000))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def title(kind: str, event_count: int) -> str:
    if kind == "events":
        return f"Store {_plural(event_count, 'audit event')}"
    if kind == "maintenance":
        return "Maintain partitions and retention"
    return f"Run {kind}"


def task_kind(function: object) -> str:
    name = str(function)
    return _KIND_OF_FUNCTION.get(name, name)


def queued_task(
    task_id: str,
    score: int,
    job: dict[str, Any],
    pttl: int,
    attempts: int,
    now_ms: int,
    *,
    in_progress_ms: int,
) -> Task:
    kind = task_kind(job.get("f"))
    payload = joined_segments(job.get("a") or [""])
    events = count_events(payload) if isinstance(payload, str | bytes) else 0
    enqueued = job.get("et")
    heading = title(kind, events)
    status: Status
    started_ms: int | None = None
    next_ms: int | None = score
    if pttl > 0:  # arq's in-progress marker: its remaining life tells when the job started
        status, next_ms = "in_progress", None
        started_ms = now_ms - max(0, in_progress_ms - pttl)
        message = f"Running (attempt {attempts + 1} of {MAX_ATTEMPTS})"
        detail = f"A worker started it {seconds(now_ms - started_ms)} ago."
    elif score > now_ms:
        status = "retrying"
        message = (
            f"Retrying in {seconds(score - now_ms)} (attempt {attempts + 1} of {MAX_ATTEMPTS})"
        )
        if attempts:
            detail = (
                f"Attempt {attempts} failed; attempt {attempts + 1} starts at "
                f"{at(score):%Y-%m-%d %H:%M:%S} UTC."
            )
        else:
            detail = "Deferred while the database is unreachable; waiting uses no attempt."
    else:
        status = "queued"
        waited = now_ms - int(enqueued) if isinstance(enqueued, int) else 0
        message = "Waiting for a worker"
        detail = f"Enqueued {seconds(waited)} ago; the next free worker takes it."
    too_large = job.get("too_large")
    if isinstance(too_large, int):  # not loaded (service/ops/tasks.py VIEW_MAX_JOB_BYTES)
        heading = f"{kind.capitalize()} task of {too_large} bytes"
        detail += f" It is {too_large} bytes: too large to be read for this view."
    presentation = TaskPresentation(title=heading, status_message=message, detail_message=detail)
    return _task(
        task_id,
        kind,
        status,
        attempts,
        events,
        enqueued,
        presentation,
        started_ms=started_ms,
        next_ms=next_ms,
    )


def _task(
    task_id: str,
    kind: str,
    status: Status,
    attempts: int,
    events: int,
    enqueued: object,
    presentation: TaskPresentation,
    *,
    started_ms: int | None,
    next_ms: int | None,
) -> Task:
    return Task(
        id=task_id,
        kind=kind,
        status=status,
        attempts=attempts,
        max_attempts=MAX_ATTEMPTS,
        event_count=events,
        enqueued_at=at(enqueued) if isinstance(enqueued, int | float) else None,
        started_at=at(started_ms),
        finished_at=None,
        next_attempt_at=at(next_ms),
        failure=None,
        presentation=presentation,
    )


def failed_task(letter: dead_letter.DeadLetter, extra_keys: frozenset[str] = frozenset()) -> Task:
    message = redact_sensitive_in_string(letter.message, extra_keys)
    return Task(
        id=letter.id,
        kind=letter.kind,
        status="failed",
        attempts=letter.attempts,
        max_attempts=MAX_ATTEMPTS,
        event_count=letter.event_count,
        enqueued_at=at(letter.enqueued_at_ms),
        started_at=None,
        finished_at=at(letter.failed_at_ms),
        next_attempt_at=None,
        failure=TaskFailure(
            error_name=letter.error_name,
            message=message,
            classification=letter.classification,
        ),
        presentation=TaskPresentation(
            title=title(letter.kind, letter.event_count),
            status_message=f"Failed: {letter.error_name}",
            detail_message=message,
        ),
    )


def complete_task(entry: dict[str, str]) -> Task:
    events = int(entry.get("event_count", 0))
    enqueued = int(entry.get("enqueued_at_ms", 0))
    started = int(entry.get("started_at_ms", 0))
    finished = int(entry.get("finished_at_ms", 0))
    return Task(
        id=entry.get("id", ""),
        kind="events",
        status="complete",
        attempts=int(entry.get("attempts", 1)),
        max_attempts=MAX_ATTEMPTS,
        event_count=events,
        enqueued_at=at(enqueued),
        started_at=at(started),
        finished_at=at(finished),
        next_attempt_at=None,
        failure=None,
        presentation=TaskPresentation(
            title=title("events", events),
            status_message=f"Stored {_plural(events, 'event')}",
            detail_message=(
                f"Written in {(finished - started) / 1000:.2f} s, "
                f"{(finished - enqueued) / 1000:.2f} s after it was enqueued."
            ),
        ),
    )


def task_from_result(
    task_id: str, result: dict[str, Any], extra_keys: frozenset[str] = frozenset()
) -> TaskDetail:
    """A task known only by arq's result: complete, or failed inside arq itself."""
    args = result.get("a") or [""]
    raw = args[0] if args and isinstance(args[0], str) else None
    payload = None if raw is None else redacted_payload(raw, extra_keys)
    kind = task_kind(result.get("f"))
    if result.get("s"):
        summary = result.get("r") if isinstance(result.get("r"), dict) else {}
        if summary and isinstance(summary.get("events"), list):
            payload = redact_escapes(redact_sensitive(summary["events"]))
        events = int(summary.get("stored", 0)) if summary else 0
        entry = {
            "id": task_id,
            "event_count": str(events),
            "enqueued_at_ms": str(result.get("et", 0)),
            "started_at_ms": str(result.get("st", 0)),
            "finished_at_ms": str(result.get("ft", 0)),
        }
        task = complete_task(entry)
        if kind != "events":
            done = msgspec.structs.replace(
                task.presentation, title=title(kind, 0), status_message="Done"
            )
            task = msgspec.structs.replace(task, kind=kind, presentation=done)
        return with_payload(task, payload)
    # arq failed the job itself (an exception the worker did not handle, a timeout).
    message = redact_sensitive_in_string(str(result.get("r", "")), extra_keys)
    events = count_events(args[0]) if args and isinstance(args[0], str) else 0
    task = Task(
        id=task_id,
        kind=kind,
        status="failed",
        attempts=int(result.get("t") or 1),
        max_attempts=MAX_ATTEMPTS,
        event_count=events,
        enqueued_at=at(result.get("et")),
        started_at=at(result.get("st")),
        finished_at=at(result.get("ft")),
        next_attempt_at=None,
        failure=TaskFailure(error_name="JobFailed", message=message, classification="unknown"),
        presentation=TaskPresentation(
            title=title(kind, events),
            status_message="Failed: JobFailed",
            detail_message=message or "the worker failed the job without a message",
        ),
    )
    return with_payload(task, payload)


def with_payload(task: Task, payload: Any) -> TaskDetail:
    """The task with its payload."""
    return TaskDetail(**msgspec.structs.asdict(task), payload=payload)


def without_payload(detail: TaskDetail) -> Task:
    """The task of a detail, its payload left out."""
    values = msgspec.structs.asdict(detail)
    del values["payload"], values["failures"]
    return Task(**values)
