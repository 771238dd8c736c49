"""The `auditq stats` and `auditq tasks` commands: thin clients of service/ops/ over Redis."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions

from service.cli.common import Command, add_command, add_group
from service.connections import redis_client
from service.errors import AuditqError, ConfigError
from service.events import Entity
from service.ops import task_actions
from service.ops.admin_actions import audit_cli_action
from service.ops.queue_stats import QueueStats, queue_stats
from service.ops.task_model import KINDS, MAX_LIMIT, STATUSES, CleanupPolicy, Task
from service.ops.tasks import TaskQueue
from service.settings import Settings

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 2.0  # seconds between refreshes of `auditq stats --watch`
CONNECT_TIMEOUT = 2.0  # seconds
CLEAR_SCREEN = "\033[H\033[2J"


class RedisUnavailable(AuditqError):
    """Redis did not answer."""


@contextlib.asynccontextmanager
async def _tasks(settings: Settings) -> AsyncIterator[TaskQueue]:
    """The settings' task queue over a Redis connection that is closed afterwards."""
    client: aioredis.Redis = redis_client(
        settings.require_redis(), connect_timeout=CONNECT_TIMEOUT, timeout=30
    )
    try:
        yield TaskQueue.from_settings(client, settings)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis is not answering ({type(exc).__name__})") from None
    finally:
        await client.aclose()


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_stats(stats: QueueStats) -> str:
    """Queue stats as a terminal table."""
    counts = stats.counts
    lines = [
        f"queue {stats.queue}",
        _table(
            [
                ("queued", str(counts.queued), f"oldest waiting {_age(stats.oldest_queued_age_s)}"),
                ("in progress", str(counts.in_progress), ""),
                ("retrying", str(counts.retrying), ""),
                ("failed", str(counts.failed), ""),
                ("complete", str(counts.complete), ""),
            ]
        ),
        f"events/s (last minute)  {stats.events_per_s_1m:.1f}",
        "",
    ]
    if not stats.workers:
        lines.append("no worker has sent a heartbeat in the last 30 s")
        return "\n".join(lines)
    now = time.time()
    rows = [("WORKER", "UP", "SEEN", "RUNNING", "DONE", "FAILED", "EVENTS", "BREAKER")]
    for w in stats.workers:
        rows.append(
            (
                w.id,
                _age(now - w.started_at.timestamp()),
                f"{_age(now - w.last_seen.timestamp())} ago",
                str(w.jobs_running),
                str(w.jobs_done),
                str(w.jobs_failed),
                str(w.events_stored),
                "OPEN" if w.breaker_open else "closed",
            )
        )
    lines.append(_table(rows))
    return "\n".join(lines)


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    """Print queue health; with --watch, refresh every 2 s until Ctrl-C."""
    async with _tasks(settings) as tasks:
        if not args.watch:
            print(render_stats(await queue_stats(tasks)))
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            screen = render_stats(await queue_stats(tasks))
            clear = CLEAR_SCREEN if sys.stdout.isatty() else ""
            print(f"{clear}{screen}\n\n(refreshing every {WATCH_INTERVAL:.0f} s; Ctrl-C stops)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
    return 0


def _task_row(task: Task) -> tuple[str, ...]:
    return (
        task.id,
        task.status,
        task.kind,
        str(task.event_count),
        f"{task.attempts}/{task.max_attempts}",
        _when(task.enqueued_at),
        task.presentation.status_message,
    )


async def cmd_tasks_list(settings: Settings, args: argparse.Namespace) -> int:
    """List tasks, one page."""
    async with _tasks(settings) as tasks:
        page = await tasks.page(
            status=args.status, kind=args.kind, limit=args.limit, cursor=args.cursor
        )
    if not page.items:
        print("no tasks")
    else:
        header = ("ID", "STATUS", "KIND", "EVENTS", "ATTEMPTS", "ENQUEUED", "")
        print(_table([header, *(_task_row(t) for t in page.items)]))
    if page.next_cursor:
        print(f"\nmore: auditq tasks list --cursor {page.next_cursor}")
    return 0


async def cmd_tasks_show(settings: Settings, args: argparse.Namespace) -> int:
    """Show one task and its payload as JSON."""
    async with _tasks(settings) as tasks:
        task = await tasks.get(args.id)
    if task is None:
        raise AuditqError(f"no task {args.id}")
    print(msgspec.json.format(msgspec.json.encode(task), indent=2).decode())
    return 0


async def _audit(settings: Settings, action: str, metadata: dict[str, Any], task: str = "") -> None:
    entity = Entity(type="task", id=task[:1024]) if task else None
    await audit_cli_action(settings, action, entity=entity, metadata=metadata)


async def _provenance_key(settings: Settings) -> bytes | None:
    """The key that lets a retried task keep its provenance; None without a database."""
    if not settings.database_url:
        return None
    from service.store import db
    from service.store.secrets import read_provenance_key

    conn = await db.connect(settings.database_url)
    try:
        return await read_provenance_key(conn)
    finally:
        await conn.close()


async def cmd_tasks_retry(settings: Settings, args: argparse.Namespace) -> int:
    """Queue a failed task's events again."""

    async def record(event_count: int) -> None:  # before the retry: no record, no retry
        await _audit(settings, "task.retried", {"event_count": event_count}, args.id)

    key = await _provenance_key(settings)
    async with _tasks(settings) as tasks:
        tasks.provenance_key = key
        task = await task_actions.retry(tasks, args.id, record=record)
    print(f"task {task.id} is {task.status} again ({task.presentation.title.lower()})")
    return 0


async def cmd_tasks_cleanup(settings: Settings, args: argparse.Namespace) -> int:
    """Delete old complete and failed tasks."""
    try:
        policy = msgspec.convert(
            {
                "complete_older_than_days": args.complete_older_than_days,
                "failed_older_than_days": args.failed_older_than_days,
                "keep_recent_failed": args.keep_recent_failed,
            },
            CleanupPolicy,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid cleanup policy: {exc}") from None
    await _audit(settings, "task.cleanup", {"policy": msgspec.to_builtins(policy)})
    async with _tasks(settings) as tasks:
        deleted = await task_actions.cleanup(tasks, policy)
    print(f"deleted {deleted.complete} complete and {deleted.failed} failed tasks")
    return 0


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_LIMIT}")
    return limit


def add_parsers(sub: Any) -> None:
    """Add `stats` and `tasks` to the `auditq` subcommands."""
    defaults = CleanupPolicy()
    stats_help = "Show queue health: counts, oldest wait, events/s, workers."
    stats = add_command(sub, "stats", cmd_stats, stats_help)
    stats.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")

    tasks_help = "Inspect, retry and clean up the queue's tasks."
    actions = add_group(sub, "tasks", tasks_help)

    def add(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        return add_command(actions, name, command, help_text)

    listing = add("list", cmd_tasks_list, "List tasks: queue first, then failed and complete.")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--kind", choices=KINDS)
    listing.add_argument("--limit", type=_limit, default=50, help="tasks per page (default 50)")
    listing.add_argument("--cursor", help="the cursor the previous page printed")
    add("show", cmd_tasks_show, "Show one task and its (redacted) payload.").add_argument("id")
    add("retry", cmd_tasks_retry, "Queue a failed task's events again.").add_argument("id")
    cleanup = add(
        "cleanup", cmd_tasks_cleanup, "Delete old complete and failed tasks (keeps recent ones)."
    )
    cleanup.add_argument(
        "--complete-older-than-days",
        type=int,
        default=defaults.complete_older_than_days,
        help=f"default {defaults.complete_older_than_days}",
    )
    cleanup.add_argument(
        "--failed-older-than-days",
        type=int,
        default=defaults.failed_older_than_days,
        help=f"default {defaults.failed_older_than_days}",
    )
    cleanup.add_argument(
        "--keep-recent-failed",
        type=int,
        default=defaults.keep_recent_failed,
        help=f"failed tasks kept whatever their age (default {defaults.keep_recent_failed})",
    )
