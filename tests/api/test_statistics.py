"""Statistics from the rollup are the live count, exactly: any window, tenant, late rows,
retention and erasure, on real servers."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.events import AuditEvent
from service.ops import subjects
from service.settings import Settings
from service.store import db
from service.store.rollup import fold_all
from tests.api.test_audit_logs import BASE, get_json, make_event, seed
from tests.support.admin_api import Tokens
from tests.support.polling import wait_for
from tests.support.stores import set_retention
from tests.support.worker import running_worker
from workers.maintenance import drop_expired_partitions

STATS = f"{BASE}/statistics"
NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = datetime.combine(NOW.date(), datetime.min.time(), UTC)

# The route's queries before the rollup (every row of the window, each time): the reference.
_WHERE = "WHERE ts >= $1 AND ts <= $2 AND ($3::text IS NULL OR tenant = $3)"
LIVE_PER_DAY = f"""
SELECT (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS count FROM audit_log {_WHERE} GROUP BY day
"""
LIVE_TOP_ACTORS = f"""
SELECT actor_id, count(*) AS count FROM audit_log {_WHERE} AND actor_id IS NOT NULL
GROUP BY actor_id ORDER BY count DESC, actor_id LIMIT 10
"""
# An actor's name: the one of its latest row up to the window's end.
LIVE_ACTOR_NAME = """
SELECT actor_name FROM audit_log WHERE actor_id = $1 AND ts <= $2 AND actor_name IS NOT NULL
ORDER BY ts DESC LIMIT 1
"""
LIVE_TOP_ACTIONS = f"""
SELECT action, count(*) AS count FROM audit_log {_WHERE}
GROUP BY action ORDER BY count DESC, action LIMIT 10
"""
LIVE_BY = "SELECT {column} AS key, count(*) AS count FROM audit_log " + _WHERE + " GROUP BY 1"


async def live(pg: asyncpg.Connection, since: datetime, until: datetime, tenant: str | None) -> Any:
    """What the route answered when it counted every row of the window."""
    window = (since, until, tenant)
    counts = {r["day"]: r["count"] for r in await pg.fetch(LIVE_PER_DAY, *window)}
    first, days = since.date(), (until.date() - since.date()).days + 1
    by = {}
    for column, keys in (("severity", ("info", "notice", "warning", "critical")),
                         ("outcome", ("success", "failure"))):  # fmt: skip
        rows = await pg.fetch(LIVE_BY.format(column=column), *window)
        by[column] = dict.fromkeys(keys, 0) | {r["key"]: r["count"] for r in rows}
    return {
        "per_day": [
            {"day": d.isoformat(), "count": counts.get(d, 0)}
            for d in (first + timedelta(days=n) for n in range(days))
        ],
        "top_actors": [
            {
                "actor_id": r["actor_id"],
                "actor_name": await pg.fetchval(LIVE_ACTOR_NAME, r["actor_id"], until),
                "count": r["count"],
            }
            for r in await pg.fetch(LIVE_TOP_ACTORS, *window)
        ],
        "top_actions": [dict(r) for r in await pg.fetch(LIVE_TOP_ACTIONS, *window)],
        "by_severity": by["severity"],
        "by_outcome": by["outcome"],
    }


async def answered(
    api: TestClient[Any, Any],
    headers: dict[str, str],
    since: datetime,
    until: datetime,
    tenant: str | None = None,
) -> Any:
    params = {"since": since.isoformat(), "until": until.isoformat()}
    return await get_json(api, STATS, headers, **params | ({"tenant": tenant} if tenant else {}))


async def assert_exact(
    api: TestClient[Any, Any],
    headers: dict[str, str],
    pg: asyncpg.Connection,
    windows: list[tuple[datetime, datetime]],
    tenants: tuple[str | None, ...] = (None, "acme", "globex"),
) -> None:
    for since, until in windows:
        for tenant in tenants:
            expected = await live(pg, since, until, tenant)
            assert await answered(api, headers, since, until, tenant) == expected, (
                since,
                until,
                tenant,
            )


def events(count: int, *, start: datetime, span: timedelta, seed: int = 3) -> list[AuditEvent]:
    """Events spread over `span` from `start`: some actors, tenants and actions, and none."""
    rnd = random.Random(seed)
    made = []
    for _ in range(count):
        actor = rnd.choice(["alice", "bob", "carol", "dave", None])
        who = {"actor": {"id": actor, "type": "user", "name": actor.title()}} if actor else {}
        made.append(
            make_event(
                action=rnd.choice(["auth.login", "doc.viewed", "doc.updated", "user.created"]),
                ts=(start + span * rnd.random()).isoformat(),
                severity=rnd.choice(["info", "info", "notice", "warning", "critical"]),
                outcome=rnd.choice(["success", "success", "failure"]),
                tenant=rnd.choice(["acme", "globex", None]),
                **who,
            )
        )
    return made


def windows() -> list[tuple[datetime, datetime]]:
    """Windows of every shape: whole days, edges early and late in a day, within one day."""
    return [
        (NOW - timedelta(days=30), NOW),  # the default window
        (TODAY - timedelta(days=9), TODAY),  # day boundaries
        (TODAY - timedelta(days=9, hours=3), TODAY - timedelta(days=2, hours=20)),
        (TODAY - timedelta(days=9, hours=21), TODAY - timedelta(days=2, hours=4)),
        (TODAY - timedelta(days=5, hours=20), TODAY - timedelta(days=5, hours=2)),  # > 12 h
        (TODAY - timedelta(days=5, hours=13), TODAY - timedelta(days=5, hours=9)),  # < 12 h
        (TODAY - timedelta(days=4, hours=1), TODAY - timedelta(days=3, hours=23)),  # 2 h, 2 days
        (TODAY - timedelta(days=6, minutes=1), TODAY - timedelta(days=6, minutes=1)),  # a point
        (NOW - timedelta(days=3000), NOW),
    ]


@pytest.fixture
def reader(tokens: Tokens) -> dict[str, str]:
    return tokens.reader


@pytest.fixture
async def folded(pg: asyncpg.Connection) -> list[AuditEvent]:
    """Twelve days of rows, folded into the rollup as the worker does, and a few not yet."""
    stored = events(1500, start=TODAY - timedelta(days=11), span=NOW - TODAY + timedelta(days=11))
    await seed(pg, stored[:1200])
    assert await fold_all(pg) > 0
    await seed(pg, stored[1200:])  # stored since the last fold: pending
    return stored


async def test_statistics_of_any_window_are_the_live_count(
    api: TestClient[Any, Any], reader: dict[str, str], pg: asyncpg.Connection, folded: Any
) -> None:
    await assert_exact(api, reader, pg, windows())
    stats = await answered(api, reader, TODAY - timedelta(days=11), NOW + timedelta(minutes=1))
    assert sum(day["count"] for day in stats["per_day"]) == len(folded)
    assert await pg.fetchval("SELECT count(*) FROM rollup_pending") == 1  # the last statement
    await fold_all(pg)
    assert await answered(api, reader, TODAY - timedelta(days=11), NOW + timedelta(minutes=1)) == (
        stats
    )
    await assert_exact(api, reader, pg, windows())


async def test_late_rows_into_a_folded_day_are_counted(
    api: TestClient[Any, Any], reader: dict[str, str], pg: asyncpg.Connection, folded: Any
) -> None:
    await fold_all(pg)
    day = TODAY - timedelta(days=7)
    before = await answered(api, reader, day, day + timedelta(days=1, microseconds=-1))
    # A spool replayed, a producer's clock behind: rows of a day folded long ago, and of
    # a year without a partition of its own (the default one).
    late = events(40, start=day, span=timedelta(days=1), seed=9)
    ancient = events(25, start=datetime(2003, 5, 1, tzinfo=UTC), span=timedelta(days=3), seed=5)
    await seed(pg, late + ancient)
    after = await answered(api, reader, day, day + timedelta(days=1, microseconds=-1))
    assert after["per_day"][0]["count"] == before["per_day"][0]["count"] + 40
    old = [(datetime(2003, 4, 30, 7, tzinfo=UTC), datetime(2003, 5, 3, 14, tzinfo=UTC))]
    for _ in range(2):  # pending, then folded
        await assert_exact(api, reader, pg, [*windows(), *old])
        await fold_all(pg)


async def test_windows_ending_now_count_rows_stamped_ahead_of_the_clock(
    api: TestClient[Any, Any], reader: dict[str, str], pg: asyncpg.Connection, folded: Any
) -> None:
    # Today is taken whole from the rollup for a window ending now; the rows a producer's
    # clock stamped ahead of ours (later today) must be subtracted, folded or pending.
    now = datetime.now(UTC)
    ahead = events(30, start=now + timedelta(minutes=1), span=timedelta(minutes=4), seed=11)
    await seed(pg, [e for e in ahead if e.ts.date() == now.date()] or ahead[:1])
    ending_now = [
        (now - timedelta(days=30), now),
        (now - timedelta(days=2, hours=5), now),
        (max(TODAY, now - timedelta(hours=1)), now),
        (TODAY, now),
    ]
    for _ in range(2):  # pending, then folded
        await assert_exact(api, reader, pg, ending_now)
        await fold_all(pg)


async def test_rows_removed_by_retention_leave_the_statistics(
    api: TestClient[Any, Any], reader: dict[str, str], pg: asyncpg.Connection
) -> None:
    # Rows of a past month with a partition of its own, and of a year in the default one.
    month = date(NOW.year - 1, NOW.month, 1)
    await pg.fetchval("SELECT auditq_ensure_partition($1)", month)
    start = datetime.combine(month, datetime.min.time(), UTC)
    old = events(300, start=start, span=timedelta(days=27), seed=11)
    ancient = events(60, start=datetime(2018, 5, 1, tzinfo=UTC), span=timedelta(days=3), seed=12)
    recent = events(200, start=TODAY - timedelta(days=5), span=timedelta(days=5), seed=13)
    await seed(pg, old[:200] + ancient[:40] + recent)
    await fold_all(pg)
    await seed(pg, old[200:] + ancient[40:])  # these are dropped before they are folded
    spanning = [(datetime(2018, 1, 1, 5, tzinfo=UTC), NOW), (start - timedelta(hours=5), NOW)]
    before = await answered(api, reader, *spanning[0])
    assert sum(d["count"] for d in before["per_day"]) == 560
    await set_retention(pg, 200)
    dropped = await drop_expired_partitions(pg)
    assert dropped == [f"audit_log_y{month.year:04d}m{month.month:02d}"]
    after = await answered(api, reader, *spanning[0])
    assert sum(d["count"] for d in after["per_day"]) == 200
    await assert_exact(api, reader, pg, spanning + windows())
    await fold_all(pg)
    await assert_exact(api, reader, pg, spanning)
    kept = "SELECT count(*) FROM rollup_day WHERE day < $1"
    assert await pg.fetchval(kept, TODAY.date() - timedelta(days=6)) == 0


async def test_an_erased_actor_shows_as_its_pseudonym(
    api: TestClient[Any, Any],
    reader: dict[str, str],
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    settings: Settings,
    folded: Any,
) -> None:
    window = (TODAY - timedelta(days=11), NOW + timedelta(minutes=1))
    before = await answered(api, reader, *window)
    alice = next(a for a in before["top_actors"] if a["actor_id"] == "alice")
    pool = await db.create_pool(settings.database_url or "", size=2)
    try:
        outcome = await subjects.anonymise(pool, redis, settings, "alice")
    finally:
        await pool.close()
    assert outcome is not None
    after = await answered(api, reader, *window)
    actors = {a["actor_id"]: a["count"] for a in after["top_actors"]}
    assert "alice" not in actors and actors[outcome.pseudonym] == alice["count"]
    await assert_exact(api, reader, pg, windows())
    await fold_all(pg)  # the rows that were pending are folded with the pseudonym
    await assert_exact(api, reader, pg, windows())
    rollup = await pg.fetchval("SELECT string_agg(t::text, ' ') FROM rollup_day_actor t")
    assert "alice" not in rollup and outcome.pseudonym in rollup


async def test_the_worker_keeps_the_rollup(
    api: TestClient[Any, Any], reader: dict[str, str], pg: asyncpg.Connection, settings: Settings
) -> None:
    await seed(pg, events(300, start=NOW - timedelta(days=3), span=timedelta(days=3)))
    async with running_worker(settings):

        async def nothing_pending() -> bool:
            return not await pg.fetchval("SELECT count(*) FROM rollup_pending")

        await wait_for(nothing_pending)
    assert await pg.fetchval("SELECT sum(n) FROM rollup_day") >= 300
    await assert_exact(api, reader, pg, windows())


async def test_rows_of_a_transaction_open_during_a_fold_are_counted_once_committed(
    api: TestClient[Any, Any],
    reader: dict[str, str],
    pg: asyncpg.Connection,
    database_url: str,
    folded: Any,
) -> None:
    window = (TODAY - timedelta(days=11), NOW + timedelta(minutes=1))
    writer = await db.connect(database_url)
    try:
        transaction = writer.transaction()
        await transaction.start()
        # Stored first, committed after a fold and rows of other statements (seqs are taken
        # a thousand at a time per session: no seq order tells what the fold has seen).
        await seed(writer, events(50, start=TODAY - timedelta(days=4), span=timedelta(days=2)))
        await seed(pg, events(30, start=TODAY - timedelta(days=3), span=timedelta(days=1)))
        await fold_all(pg)
        assert await pg.fetchval("SELECT count(*) FROM rollup_pending") == 0  # theirs is unseen
        await assert_exact(api, reader, pg, windows())
        await transaction.commit()
    finally:
        await writer.close()
    stats = await answered(api, reader, *window)
    assert sum(day["count"] for day in stats["per_day"]) == len(folded) + 80
    await assert_exact(api, reader, pg, windows())
    await fold_all(pg)
    assert await pg.fetchval("SELECT sum(n) FROM rollup_day") == len(folded) + 80
    await assert_exact(api, reader, pg, windows())
