"""Statistics of audit logs over a window: per day (or hour), top actors and actions, severities,
outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from service.api.audit_logs.items import AuditLogStatistics
from service.api.audit_logs.query import Text, Time
from service.api.body import json_response
from service.api.errors import bad_parameter
from service.api.inputs import read_query
from service.api.openapi import operation
from service.api.state import POOL
from service.store import rollup
from service.store.items import holds_nul

STATS_DEFAULT_WINDOW = timedelta(days=30)
STATS_MAX_WINDOW = timedelta(days=3660)  # per_day lists every day: keep it a sane length
STATS_TOP = 10  # entries in top_actors and top_actions
# Hours are counted from the rows themselves (the rollup keeps days): a window of at most a
# week, whose rows the ts index counts (docs/scaling.md, "Statistics").
STATS_MAX_HOUR_WINDOW = timedelta(days=7)
STATS_DEFAULT_HOUR_WINDOW = timedelta(hours=24)

SEVERITIES: tuple[str, ...] = ("info", "notice", "warning", "critical")
OUTCOMES: tuple[str, ...] = ("success", "failure")


class StatisticsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The window of the statistics (at most STATS_MAX_WINDOW) and its tenant."""

    since: Annotated[Time, msgspec.Meta(description="default: 30 days before until")] | None = None
    until: Annotated[Time, msgspec.Meta(description="default: now")] | None = None
    tenant: Text | None = None
    bucket: (
        Annotated[
            Literal["day", "hour"],
            msgspec.Meta(
                description="`hour`: also per_hour, every UTC hour of the window (then at "
                f"most {STATS_MAX_HOUR_WINDOW.days} days, default: the last 24 hours)"
            ),
        ]
        | None
    ) = None


def stats_window(query: StatisticsQuery) -> tuple[datetime, datetime]:
    """The window asked, checked: a 400 naming the bound it passes."""
    hourly = query.bucket == "hour"
    default, longest = (
        (STATS_DEFAULT_HOUR_WINDOW, STATS_MAX_HOUR_WINDOW)
        if hourly
        else (STATS_DEFAULT_WINDOW, STATS_MAX_WINDOW)
    )
    until = query.until or datetime.now(UTC)
    if query.since is not None:
        since = query.since
    elif until - datetime.min.replace(tzinfo=UTC) < default:
        raise bad_parameter("until", "is too early for a default window: give since too")
    else:
        since = until - default
    if since > until:
        raise bad_parameter("since", "must not be after until")
    if until - since > longest:
        raise bad_parameter(
            "since",
            f"must be at most {longest.days} days before until"
            + (" when bucket=hour" if hourly else ""),
        )
    return since, until


def _hours(since: datetime, until: datetime) -> list[datetime]:
    """The start of every UTC hour the window touches."""
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour <= until:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


@operation(
    query=StatisticsQuery,
    responses={200: AuditLogStatistics},
    description=f"The window is at most {STATS_MAX_WINDOW.days} days long "
    f"({STATS_MAX_HOUR_WINDOW.days} with bucket=hour) and since is not after until (a 400 "
    "names the bound otherwise).",
    extensions={
        "x-max-window-days": STATS_MAX_WINDOW.days,
        "x-max-hour-window-days": STATS_MAX_HOUR_WINDOW.days,
    },
)
async def audit_log_statistics(request: web.Request) -> web.Response:
    """Counts per day (and hour), top actors (named) and actions, by severity and outcome
    (default: 30 days; 24 hours with bucket=hour)."""
    query = read_query(StatisticsQuery, request.query)
    since, until = stats_window(query)
    counts = rollup.Statistics({}, [], [], {}, {})
    per_hour: dict[datetime, int] = {}
    names: dict[str, str] = {}
    if not holds_nul(query.tenant):  # else no row matches: PostgreSQL text holds no NUL
        async with (
            request.app[POOL].acquire() as conn,
            # One snapshot: each row is then either folded into the rollup or pending.
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            counts = await rollup.statistics(conn, since, until, query.tenant, top=STATS_TOP)
            top = [actor for actor, _ in counts.top_actors]
            names = await rollup.actor_names(conn, top, until)
            if query.bucket == "hour":
                per_hour = await rollup.per_hour(conn, since, until, query.tenant)
    first, days = since.date(), (until.date() - since.date()).days + 1
    body: dict[str, Any] = {
        # Every day of the window, zeros included: a chart needs no gap-filling.
        "per_day": [
            {"day": day.isoformat(), "count": counts.per_day.get(day, 0)}
            for day in (first + timedelta(days=n) for n in range(days))
        ],
    }
    if query.bucket == "hour":
        body["per_hour"] = [
            {"hour": hour, "count": per_hour.get(hour, 0)} for hour in _hours(since, until)
        ]
    return json_response(
        body
        | {
            "top_actors": [
                {"actor_id": k, "actor_name": names.get(k), "count": n}
                for k, n in counts.top_actors
            ],
            "top_actions": [{"action": k, "count": n} for k, n in counts.top_actions],
            "by_severity": dict.fromkeys(SEVERITIES, 0) | counts.by_severity,
            "by_outcome": dict.fromkeys(OUTCOMES, 0) | counts.by_outcome,
        }
    )
