"""What SQLAlchemy change capture adds to a commit, per row, with a sync and an async session.

    python -m bench.sqlalchemy_capture [--rows N] [--batch N] [--rounds N]

Fresh embedded Valkey + PostgreSQL; an application table in a database of its own. Each
round inserts ROWS rows, updates two columns of each, then deletes them, BATCH rows per
commit, once without capture and once with it (`capture_changes` + `capture_nowait`, the
events queued in Valkey; no worker runs). The sync Session runs in a worker thread, as an
async service runs its sync code. Printed, best round of each, per row: the time spent in
`commit()` (what the application waits for), and this process's CPU over the whole round
(what capture costs in all, off the commit path included: the diff, the client's
validation, redaction and encoding, the sending). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import String, create_engine, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from bench.common import Stack
from service.producer.client import AuditClient
from service.producer.sqlalchemy import Audited, ChangeCapture

APP_DATABASE = "bench_app"
PHASES = ("insert", "update", "delete")


class Base(DeclarativeBase):
    pass


class Item(Audited, Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    sku: Mapped[str] = mapped_column(String(32))
    location: Mapped[str | None]
    quantity: Mapped[int]
    note: Mapped[str | None]


class BenchSession(Session):
    pass


def _item(i: int) -> Item:
    return Item(name=f"item {i}", sku=f"SKU-{i:06d}", location="A1", quantity=i, note=None)


def _batches(items: list[Item], batch: int) -> list[list[Item]]:
    return [items[start : start + batch] for start in range(0, len(items), batch)]


def _change(phase: str, session: Session, chunk: list[Item]) -> None:
    """Stage one batch's change of `phase` in the session (no I/O)."""
    for item in chunk:
        if phase == "insert":
            session.add(item)
        elif phase == "update":
            item.location, item.quantity = "B2", item.quantity + 1
        else:
            session.delete(item)


def run_sync(engine: Any, rows: int, batch: int) -> dict[str, float]:
    """Seconds spent in `commit()` per phase, with a sync Session."""
    sessions = sessionmaker(engine, class_=BenchSession, expire_on_commit=False)
    items = [_item(i) for i in range(rows)]
    times = dict.fromkeys(PHASES, 0.0)
    with sessions() as session:
        for phase in PHASES:
            for chunk in _batches(items, batch):
                _change(phase, session, chunk)
                started = time.perf_counter()
                session.commit()
                times[phase] += time.perf_counter() - started
    return times


async def run_async(engine: AsyncEngine, rows: int, batch: int) -> dict[str, float]:
    """Seconds spent in `commit()` per phase, with an AsyncSession."""
    sessions = async_sessionmaker(engine, sync_session_class=BenchSession, expire_on_commit=False)
    items = [_item(i) for i in range(rows)]
    times = dict.fromkeys(PHASES, 0.0)
    async with sessions() as session:
        for phase in PHASES:
            for chunk in _batches(items, batch):
                _change(phase, session.sync_session, chunk)
                started = time.perf_counter()
                await session.commit()
                times[phase] += time.perf_counter() - started
                # What the commit handed to the loop (building and queueing its events)
                # runs here, after the commit returned, as between a service's requests.
                await asyncio.sleep(0)
    return times


class TimedCapture(ChangeCapture):
    """Capture that also counts the time its hooks take inside the commits."""

    hook_seconds = 0.0

    def _after_flush(self, session: Session, flush_context: object) -> None:
        started = time.perf_counter()
        super()._after_flush(session, flush_context)
        self.hook_seconds += time.perf_counter() - started

    def _after_commit(self, session: Session) -> None:
        started = time.perf_counter()
        super()._after_commit(session)
        self.hook_seconds += time.perf_counter() - started


async def measure(
    run: Callable[[], Awaitable[dict[str, float]]], client: AuditClient, captured: bool
) -> tuple[dict[str, float], float]:
    """One round: seconds in commit() per phase, and this process's CPU seconds.

    With capture, the time its hooks took inside the commits is the phase "hooks"."""
    capture = TimedCapture(client, target=BenchSession) if captured else None
    cpu = time.process_time()
    try:
        times = await run()
        if capture is not None:
            await client.aclose()  # sends what is buffered: its CPU counts too
            times["hooks"] = capture.hook_seconds
    finally:
        if capture is not None:
            capture.remove()
    return times, time.process_time() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="rows per commit")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Stack() as stack:
        stack.stack.postgres.create_database(APP_DATABASE)
        url = stack.stack.postgres.url_for(APP_DATABASE)
        sync_engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        async_engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        Base.metadata.create_all(sync_engine)
        print(f"{args.rows} rows, {args.batch} per commit, best of {args.rounds} rounds")
        print(
            f"{'session':<8} {'capture':<8} commit: "
            + " ".join(f"{p:>7}" for p in PHASES)
            + "  process cpu"
        )
        for kind in ("sync", "async"):
            best: dict[bool, tuple[dict[str, float], float]] = {}
            for _ in range(args.rounds):
                for captured in (False, True):
                    client = AuditClient.from_url(stack.redis_url, queue="bench-sqlalchemy")
                    if kind == "sync":

                        async def run() -> dict[str, float]:
                            # In a worker thread, as an async service runs its sync code.
                            return await asyncio.to_thread(
                                run_sync, sync_engine, args.rows, args.batch
                            )
                    else:

                        async def run() -> dict[str, float]:
                            return await run_async(async_engine, args.rows, args.batch)

                    times, cpu = await measure(run, client, captured)
                    if not captured:
                        await client.aclose()
                    with sync_engine.begin() as conn:
                        conn.execute(delete(Item))
                    old = best.get(captured)
                    if old is None:
                        best[captured] = (times, cpu)
                    else:
                        best[captured] = (
                            {p: min(old[0][p], times[p]) for p in times},
                            min(old[1], cpu),
                        )
            for captured in (False, True):
                times, cpu = best[captured]
                per_row = [times[p] / args.rows * 1e6 for p in PHASES]
                cpu_row = cpu / (args.rows * len(PHASES)) * 1e6
                print(
                    f"{kind:<8} {'on' if captured else 'off':<8}         "
                    + " ".join(f"{v:7.1f}" for v in per_row)
                    + f"  {cpu_row:11.1f}  us/row"
                )
            (off, off_cpu), (on, on_cpu) = best[False], best[True]
            added = [(on[p] - off[p]) / args.rows * 1e6 for p in PHASES]
            added_cpu = (on_cpu - off_cpu) / (args.rows * len(PHASES)) * 1e6
            hooks = on["hooks"] / (args.rows * len(PHASES)) * 1e6
            print(
                f"{kind:<8} {'added':<8}         "
                + " ".join(f"{v:7.1f}" for v in added)
                + f"  {added_cpu:11.1f}  us/row"
            )
            print(f"{kind:<8} capture's hooks inside the commits: {hooks:.1f} us/row")
        with sync_engine.connect() as conn:
            assert conn.execute(select(Item)).first() is None
        sync_engine.dispose()
        await async_engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
