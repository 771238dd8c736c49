"""Fixtures of the integrity tests: a seal key, rows, a sealer, a verifier, runtime roles."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service import db
from service.events import AuditEvent, Entity, finalize
from service.integrity.keys import load_or_create_private_key
from service.integrity.verify import Report, verify
from service.store.seals import seal_once
from workers.writer import write_events

RUNTIME_ROLES = ("auditq_worker", "auditq_api")


@pytest.fixture
def seal_key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_private_key(tmp_path / "seal-key")


async def store(pg: asyncpg.Connection, count: int, *, prefix: str = "e") -> list[uuid.UUID]:
    """Store `count` realistic rows in one statement; return their ids."""
    events = [
        finalize(
            AuditEvent(
                action="project.updated",
                entity=Entity(type="project", id=f"{prefix}-{i}", name=f"Project {i}"),
                metadata={"plan": "pro", "seats": i},
                source="tests",
            )
        )[0]
        for i in range(count)
    ]
    await write_events(pg, events)
    return [uuid.UUID(str(e.id)) for e in events]


async def seal_all(pg: asyncpg.Connection, key: Ed25519PrivateKey) -> int:
    """Seal until nothing is pending; return the checkpoints made."""
    made = 0
    while await seal_once(pg, key) is not None:
        made += 1
    return made


async def run_verify(
    pg: asyncpg.Connection, key: Ed25519PrivateKey, **kwargs: object
) -> tuple[Report, list[str]]:
    lines: list[str] = []
    report = await verify(pg, key.public_key(), emit=lines.append, **kwargs)  # type: ignore[arg-type]
    return report, lines


def url_as(database_url: str, role: str, password: str) -> str:
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def rows_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection, for verify to stream the rows on (its fast path)."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def role_password() -> str:
    return secrets.token_hex(16)


@pytest.fixture
async def role_urls(
    pg: asyncpg.Connection, database_url: str, role_password: str
) -> dict[str, str]:
    """Login URLs of the runtime roles for this test's database (a password set for the run)."""
    for role in RUNTIME_ROLES:
        await pg.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{role_password}'")
    return {role: url_as(database_url, role, role_password) for role in RUNTIME_ROLES}


@pytest.fixture
async def worker_conn(role_urls: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    conn = await db.connect(role_urls["auditq_worker"])
    yield conn
    await conn.close()


@pytest.fixture
async def api_conn(role_urls: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
    conn = await db.connect(role_urls["auditq_api"])
    yield conn
    await conn.close()
