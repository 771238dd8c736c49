"""Migration 0002 brings a store of the previous release to this schema: the same functions
(bodies and settings), grants and tables as a new store, and the subject key moved out."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.store import db
from tests.support.servers import Servers

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "b2222d0"  # the release before least privilege (its schema.sql)
# What a store is, for this comparison: functions, relations with their grants, triggers.
SHAPE = {
    "functions": """
        SELECT p.oid::regprocedure::text AS name, p.prosrc, p.prosecdef,
               coalesce(p.proconfig, '{}') AS config, coalesce(p.proacl::text, '') AS acl
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""",
    "relations": """
        SELECT c.relname, c.relkind, coalesce(c.relacl::text, '') AS acl,
               array(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                     AND NOT a.attisdropped ORDER BY a.attname) AS columns
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
          AND c.relname !~ '^audit_log_y' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, tgfoid::regprocedure::text FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
    "schema": "SELECT coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'public'",
}


def previous_schema(commit: str = PREVIOUS) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:schema.sql"],
            capture_output=True, check=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("the previous release's schema.sql is not in this checkout's history")


@pytest.fixture
async def empty_databases(servers: Servers) -> AsyncIterator[list[str]]:
    names = [f"auditq_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield [servers.database_url(name) for name in names]
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def shape(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {k: [tuple(r) for r in await conn.fetch(sql)] for k, sql in SHAPE.items()}
    finally:
        await conn.close()


async def test_0002_brings_the_previous_store_to_this_schema(
    empty_databases: list[str], tmp_path: Path
) -> None:
    old, new = empty_databases
    conn = await asyncpg.connect(old)
    try:
        await conn.execute(previous_schema())
        key = await conn.fetchval("SELECT secret FROM api_secret WHERE name = 'subject'")
        assert key is not None
    finally:
        await conn.close()
    # The way an operator upgrades: `auditq migrate` (the numbered migrations it lacks).
    done = await db.migrate(old, subject_key_path=tmp_path / "subject-key")
    assert not done.new_store and "0002_privilege" in [m.label for m in done.ran]
    again = await db.migrate(old, subject_key_path=tmp_path / "subject-key")
    assert again.ran == []
    conn = await asyncpg.connect(old)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_secret WHERE name = 'subject'") == 0
    finally:
        await conn.close()
    assert (tmp_path / "subject-key").read_bytes() == bytes(key)
    await db.migrate(new, subject_key_path=tmp_path / "subject-key")
    migrated, made = await shape(old), await shape(new)
    for part in SHAPE:
        assert migrated[part] == made[part], part
