"""Fixtures of the integrity tests: a seal key, rows, a sealer, a verifier, runtime roles."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.keys import load_or_create_private_key
from service.store import db
from tests.support.integrity import url_as

RUNTIME_ROLES = ("auditq_worker", "auditq_api")


@pytest.fixture
def seal_key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_private_key(tmp_path / "seal-key")


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
