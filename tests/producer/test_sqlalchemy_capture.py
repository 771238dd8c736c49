"""SQLAlchemy change capture on the test's own application database, stored by the worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import DateTime, String, create_engine, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from service.events import Actor
from service.producer.client import AuditClient
from service.producer.middleware import context_middleware
from service.producer.sqlalchemy import Audited, audit_model, capture_changes
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.servers import Servers
from tests.support.worker import count_rows, running_worker


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Asset(Audited, Base):
    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    location: Mapped[str | None]
    serial: Mapped[str | None]
    api_key: Mapped[str | None]
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )


class Note(Base):
    """Not opted in: never audited."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


class Room(Base):
    """Opted in by the registry call, with a composite key and an entity name of its own."""

    __tablename__ = "rooms"

    building: Mapped[str] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]


audit_model(Room, entity="facility.room")


class AppSession(Session):
    """The application's sessions: capture listens on this class only, not on every test's."""


@pytest.fixture
async def app_database_url(servers: Servers) -> AsyncIterator[str]:
    """An application database of this test's own, beside (not inside) auditq's store."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AuditClient]:
    audit = AuditClient.from_settings(settings)
    capture = capture_changes(audit, target=AppSession, source="inventory")
    yield audit
    capture.remove()
    await audit.aclose()


async def stored_rows(database_url: str, expected: int) -> list[dict[str, Any]]:
    """Wait until the worker stored `expected` rows; return them oldest first."""

    async def stored() -> bool:
        return await count_rows(database_url) >= expected

    await wait_for(stored)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.set_type_codec("jsonb", encoder=str, decoder=json.loads, schema="pg_catalog")
        rows = await conn.fetch(
            "SELECT action, entity_type, entity_id, changes, metadata, actor_id, request_id,"
            " source FROM audit_log ORDER BY ts, id"
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def diff(row: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {c["field"]: (c.get("old"), c.get("new")) for c in row["changes"] or []}


async def test_async_session_create_update_rollback_delete_make_three_events(
    settings: Settings, database_url: str, app_database_url: str, client: AuditClient
) -> None:
    engine = create_async_engine(app_database_url.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, sync_session_class=AppSession, expire_on_commit=False)

    async def lifecycle(request: web.Request) -> web.Response:
        """A request that changes one asset in four transactions, one of them rolled back."""
        async with sessions() as session:
            asset = Asset(name="Laptop", serial="S-1", api_key="k-1")
            session.add(asset)
            session.add(Note(text="not audited"))
            await session.commit()

            asset.name = "Laptop Pro"
            asset.location = "HQ"
            await session.commit()

            asset.location = "Basement"
            await session.flush()  # flushed, then rolled back: never happened
            await session.rollback()

            await session.delete(asset)
            await session.commit()
        return web.json_response({"id": asset.id})

    app = web.Application(
        middlewares=[context_middleware(actor_resolver=lambda r: Actor(id="u-7", type="user"))]
    )
    app.router.add_post("/assets", lifecycle)
    async with TestClient(TestServer(app)) as http:
        response = await http.post("/assets", headers={"X-Request-ID": "req-assets-1"})
        assert response.status == 200
        asset_id = str((await response.json())["id"])
    await engine.dispose()

    await client.aclose()
    assert (client.sent, client.failed, client.dropped) == (3, 0, 0)  # exactly three emitted
    async with running_worker(settings):
        rows = await stored_rows(database_url, 3)
    assert len(rows) == 3
    assert [r["action"] for r in rows] == ["asset.created", "asset.updated", "asset.deleted"]
    assert {(r["entity_type"], r["entity_id"]) for r in rows} == {("asset", asset_id)}
    created, updated, deleted = rows
    assert diff(created) == {
        "id": (None, int(asset_id)),
        "name": (None, "Laptop"),
        "serial": (None, "S-1"),
        "api_key": (None, "[REDACTED]"),
    }
    # Two fields changed; updated_at changed too, but bookkeeping is skipped.
    assert diff(updated) == {"name": ("Laptop", "Laptop Pro"), "location": (None, "HQ")}
    assert diff(deleted) == {
        "id": (int(asset_id), None),
        "name": ("Laptop Pro", None),
        "location": ("HQ", None),
        "serial": ("S-1", None),
        "api_key": ("[REDACTED]", None),
    }
    # The request and actor of the middleware's context, one request id linking the three;
    # each transaction is one unit of work with its own operation id.
    assert {(r["actor_id"], r["request_id"], r["source"]) for r in rows} == {
        ("u-7", "req-assets-1", "inventory")
    }
    assert {r["metadata"]["table"] for r in rows} == {"assets"}
    assert len({r["metadata"]["operation_id"] for r in rows}) == 3


async def test_sync_session_one_unit_of_work_shares_an_operation_id(
    settings: Settings, database_url: str, app_database_url: str, client: AuditClient
) -> None:
    engine = create_engine(app_database_url.replace("postgresql://", "postgresql+psycopg://"))
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, class_=AppSession)
    # A sync session on the event loop's thread, as in an async service that still has some.
    with sessions() as session:
        first = Asset(name="Desk")
        session.add_all([first, Room(building="B1", number=101, label="Lab")])
        session.flush()
        first.location = "Floor 2"  # a second flush in the same transaction: one event
        with session.begin_nested():
            session.add(Asset(name="Chair"))
        try:
            with session.begin_nested():
                session.add(Asset(name="Lamp"))
                session.flush()
                raise RuntimeError("the savepoint is abandoned")
        except RuntimeError:
            pass
        session.commit()

        room = session.scalars(select(Room)).one()
        room.label = "Lab 2"
        throwaway = Asset(name="Box")
        session.add(throwaway)
        session.flush()
        session.delete(throwaway)  # made and removed in one transaction: nothing committed
        session.commit()
    engine.dispose()

    await asyncio.sleep(0)  # the loop runs what the commits scheduled: the events' capture
    await client.aclose()
    assert (client.sent, client.failed) == (4, 0)
    async with running_worker(settings):
        rows = await stored_rows(database_url, 4)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_action.setdefault(row["action"], []).append(row)
    assert sorted(by_action) == ["asset.created", "facility.room.created", "facility.room.updated"]
    desk, chair = sorted(by_action["asset.created"], key=lambda r: int(r["entity_id"]))
    assert diff(desk)["location"] == (None, "Floor 2")
    assert diff(desk)["name"] == (None, "Desk")
    assert diff(chair)["name"] == (None, "Chair")
    (room_created,) = by_action["facility.room.created"]
    (room_updated,) = by_action["facility.room.updated"]
    assert room_created["entity_id"] == "B1:101"
    assert diff(room_updated) == {"label": ("Lab", "Lab 2")}
    first_unit = {r["metadata"]["operation_id"] for r in (desk, chair, room_created)}
    assert len(first_unit) == 1
    assert room_updated["metadata"]["operation_id"] not in first_unit


class Misnamed(Audited, Base):
    """An entity name no action can carry: its rows are not audited, its commits still work."""

    __tablename__ = "misnamed"
    __audit_entity__ = "Not An Entity"

    id: Mapped[int] = mapped_column(primary_key=True)


async def test_capture_never_raises_into_the_commit(
    settings: Settings, app_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(app_database_url.replace("postgresql://", "postgresql+psycopg://"))
    Base.metadata.create_all(engine)
    audit = AuditClient.from_settings(settings)
    capture = capture_changes(audit, target=AppSession)
    await audit.aclose()  # a closed client: every event it is given fails, logged
    try:
        with sessionmaker(engine, class_=AppSession)() as session:
            session.add_all([Asset(name="Shelf"), Misnamed()])
            session.commit()
            assert session.scalars(select(Asset.name)).all() == ["Shelf"]
    finally:
        capture.remove()
        engine.dispose()
    await asyncio.sleep(0)  # the commit's events are handed to the client on the loop
    messages = [r.getMessage() for r in caplog.records]
    assert any("audit change capture failed" in m and "Not An Entity" in m for m in messages)
    # The Shelf's event was built and handed to the client, which logged why it failed.
    assert audit.failed == 1
    assert any(
        m.startswith("[AuditLog] Failed to queue") and "asset.created" in m for m in messages
    )
