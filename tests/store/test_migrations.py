"""Schema versions: a store of the first release, migrated, is the store schema.sql makes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.errors import ConfigError
from service.integrity.verify import verify
from service.store import db, schema
from service.store.partitions import month_start, partition_name
from service.store.seals import seal_once
from tests.support.cli import run_cli
from tests.support.servers import Servers

BASE_SQL = schema.MIGRATIONS_DIR / "0000_base.sql"
MONTHS_AHEAD = 3

# The catalog of schema `public`, by kind: what a DBA would compare between two stores.
CATALOG: dict[str, str] = {
    "relations": """
        SELECT c.relname AS name, c.relkind::text AS kind, pg_get_userbyid(c.relowner) AS owner,
               c.relpersistence::text AS persistence, pg_get_expr(c.relpartbound, c.oid) AS bound,
               c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
               c.reloptions::text AS options,
               ARRAY(SELECT x::text FROM unnest(c.relacl) x ORDER BY 1) AS acl
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": """
        SELECT c.relname || '.' || a.attname AS name,
               rank() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS position,
               format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default,
               a.attgenerated::text AS generated, a.attidentity::text AS identity,
               a.attstorage::text AS storage, a.attcollation::regcollation::text AS collation,
               ARRAY(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1) AS acl
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT c.conrelid::regclass::text || '.' || c.conname AS name, c.contype::text AS kind,
               pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public'""",
    "indexes": """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'""",
    "functions": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name,
               pg_get_functiondef(p.oid) AS definition, pg_get_userbyid(p.proowner) AS owner,
               ARRAY(SELECT x::text FROM unnest(p.proacl) x ORDER BY 1) AS acl
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'""",
    "triggers": """
        SELECT t.tgrelid::regclass::text || '.' || t.tgname AS name,
               pg_get_triggerdef(t.oid) AS definition, t.tgenabled::text AS enabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal""",
    "policies": """
        SELECT tablename || '.' || policyname AS name, permissive, roles::text AS roles, cmd,
               qual, with_check
        FROM pg_policies WHERE schemaname = 'public'""",
    "sequences": """
        SELECT sequencename AS name, data_type::text AS type, start_value, min_value, max_value,
               increment_by, cycle, cache_size,
               (SELECT d.refobjid::regclass::text || '.' || a.attname
                FROM pg_depend d JOIN pg_attribute a
                  ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.objid = format('%I.%I', schemaname, sequencename)::regclass
                  AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by
        FROM pg_sequences WHERE schemaname = 'public'""",
    "views": """
        SELECT viewname AS name, definition FROM pg_views WHERE schemaname = 'public'""",
    "schema": """
        SELECT nspname AS name, pg_get_userbyid(nspowner) AS owner,
               ARRAY(SELECT x::text FROM unnest(nspacl) x ORDER BY 1) AS acl
        FROM pg_namespace WHERE nspname = 'public'""",
    "types": """
        SELECT t.typname AS name, t.typtype::text AS kind
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typrelid = 0 AND t.typelem = 0""",
}


async def catalog(database_url: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The catalog of a store, kind -> object name -> its attributes."""
    conn = await asyncpg.connect(database_url)
    try:
        result = {}
        for kind, query in CATALOG.items():
            rows = await conn.fetch(query)
            result[kind] = {row["name"]: dict(row) for row in rows}
            assert len(result[kind]) == len(rows), f"{kind}: names not unique"
        return result
    finally:
        await conn.close()


@pytest.fixture
async def empty_url(servers: Servers) -> AsyncIterator[str]:
    """A database with nothing in it."""
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def make_base_store(conn: asyncpg.Connection, *, today: date) -> None:
    """The store as the first release's `auditq migrate` made it: schema and partitions."""
    await conn.execute(BASE_SQL.read_text())
    for offset in range(MONTHS_AHEAD + 1):  # that release made its partitions in Python
        start, end = month_start(today, offset), month_start(today, offset + 1)
        await conn.execute(
            f"CREATE TABLE {partition_name(start)} PARTITION OF audit_log"
            f" FOR VALUES FROM ('{start}') TO ('{end}')"
        )


BASE_INSERT = """
INSERT INTO audit_log (id, ts, received_at, action, category, severity, outcome, actor_id,
                       actor_name, entity_type, entity_id, tenant, ip, metadata, changes,
                       presentation)
VALUES ($1, $2, greatest($2, now() - interval '1 day'), $3, $4, 'info', 'success', $5, 'Alice',
        'doc', $6, 't1', '10.0.0.1',
        $7::jsonb, '[{"field": "title", "old": "a", "new": "b"}]'::jsonb,
        '{"code": "audit.doc.updated", "params": {}}'::jsonb)
"""
BASE_ROWS = """
SELECT id, ts, action, category, actor_id, actor_name, entity_id, tenant, ip::text AS ip,
       metadata::text AS metadata, changes::text AS changes, presentation::text AS presentation
FROM audit_log ORDER BY id
"""


async def fill_base_store(conn: asyncpg.Connection, *, now: datetime) -> None:
    """Rows in this month's partition and in the default one (a far-past event), a token."""
    rows = [
        (uuid.uuid4(), now - timedelta(minutes=n), f"doc.updated{n % 3}", "doc", f"u-{n % 5}")
        for n in range(40)
    ]
    rows.append((uuid.uuid4(), datetime(2001, 1, 1, tzinfo=UTC), "doc.created", "doc", "u-old"))
    for row_id, ts, action, category, actor in rows:
        await conn.execute(
            BASE_INSERT, row_id, ts, action, category, actor, f"d-{actor}", '{"k": "v"}'
        )
    await conn.execute(
        "INSERT INTO api_token (name, role, token_hash) VALUES ('ops', 'admin', '\\x0102')"
    )


async def test_a_store_of_the_first_release_migrates_to_the_schema_of_a_new_one(
    empty_url: str, database_url: str
) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(empty_url)
    try:
        await make_base_store(conn, today=now.date())
        await fill_base_store(conn, now=now)
        rows_before = [dict(r) for r in await conn.fetch(BASE_ROWS)]
        cursor_key = await conn.fetchval("SELECT secret FROM api_secret WHERE name = 'cursor'")
        token = await conn.fetchrow("SELECT name, role, token_hash, created_at FROM api_token")
    finally:
        await conn.close()

    done = await db.migrate(empty_url, months_ahead=MONTHS_AHEAD)

    known = schema.known_migrations()
    assert not done.new_store
    assert [m.version for m in done.ran] == [m.version for m in known[1:]]
    migrated, fresh = await catalog(empty_url), await catalog(database_url)
    for kind in CATALOG:
        assert migrated[kind] == fresh[kind], kind
    assert migrated["functions"], "the catalog query found nothing to compare"

    # The data survived, and the new machinery covers it.
    conn = await asyncpg.connect(empty_url)
    try:
        assert [dict(r) for r in await conn.fetch(BASE_ROWS)] == rows_before
        seqs = await conn.fetch("SELECT seq FROM audit_log")
        assert len({r["seq"] for r in seqs}) == len(rows_before)
        secret = await conn.fetchval("SELECT secret FROM api_secret WHERE name = 'cursor'")
        assert secret == cursor_key
        assert (
            await conn.fetchrow("SELECT name, role, token_hash, created_at FROM api_token") == token
        )
        # The statistics rollup counts the old rows once.
        while await conn.fetchval("SELECT auditq_rollup_fold(1000)"):
            pass
        assert await conn.fetchval("SELECT sum(n) FROM rollup_day") == len(rows_before)
        applied = await conn.fetch("SELECT version FROM auditq_schema_version ORDER BY 1")
        assert [r["version"] for r in applied] == [m.version for m in known]
    finally:
        await conn.close()

    again = await db.migrate(empty_url, months_ahead=MONTHS_AHEAD)
    assert again.ran == [] and not again.new_store

    # The old rows are covered by the integrity log from the migration on: verify passes.
    key = Ed25519PrivateKey.generate()
    conn = await db.connect(empty_url)
    try:
        while await seal_once(conn, key) is not None:
            pass
        lines: list[str] = []
        report = await verify(conn, key.public_key(), emit=lines.append)
        assert report.findings == 0, lines
        assert report.awaiting_seal == 0, lines
        assert report.rows == len(rows_before)
    finally:
        await conn.close()


async def test_a_store_made_before_versions_were_recorded_migrates_to_the_same_schema(
    database_url: str, servers: Servers, empty_url: str
) -> None:
    # The store as schema.sql made it before this release: everything but the version table.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP TABLE auditq_schema_version")
    finally:
        await conn.close()
    done = await db.migrate(database_url, months_ahead=MONTHS_AHEAD)
    assert [m.version for m in done.ran] == [m.version for m in schema.known_migrations()[1:]]
    await db.migrate(empty_url, months_ahead=MONTHS_AHEAD)  # a new store, made here
    migrated, fresh = await catalog(database_url), await catalog(empty_url)
    for kind in CATALOG:
        assert migrated[kind] == fresh[kind], kind


async def test_migrate_status_lists_applied_and_pending(
    empty_url: str,
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AUDITQ_DATABASE_URL", empty_url)
    assert await run_cli("migrate", "--status") == 0
    assert "empty database" in capsys.readouterr().out

    conn = await asyncpg.connect(empty_url)
    try:
        await make_base_store(conn, today=datetime.now(UTC).date())
    finally:
        await conn.close()
    assert await run_cli("migrate", "--status") == 0
    lines = capsys.readouterr().out.splitlines()
    known = schema.known_migrations()
    assert lines[0].startswith("0000_base ") and "before versions were recorded" in lines[0]
    for migration, line in zip(known[1:], lines[1:], strict=False):
        assert line.split() == [migration.label, "pending"]
    assert lines[-1] == f"{len(known) - 1} pending"

    assert await run_cli("migrate") == 0
    out = capsys.readouterr().out
    assert "0001_baseline_upgrades" in out and f"version {known[-1].label}" in out
    assert await run_cli("migrate", "--status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(" applied " in line for line in lines[:-1]), lines
    assert lines[-1] == "schema is current"


async def test_a_store_newer_than_this_auditq_is_refused(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO auditq_schema_version (version, name) VALUES (9999, 'x')")
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="schema version 9999"):
        await db.migrate(database_url)


@pytest.mark.unit
def test_migrations_are_every_numbered_file_in_order(tmp_path: Path) -> None:
    for name in ("0002_privilege.sql", "0000_base.sql", "0010_later.sql", "0001_first.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    found = schema.known_migrations(tmp_path)
    assert [m.label for m in found] == ["0000_base", "0001_first", "0002_privilege", "0010_later"]
    (tmp_path / "0002_other.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="two migrations of version 2"):
        schema.known_migrations(tmp_path)
    (tmp_path / "0002_other.sql").unlink()
    (tmp_path / "3_bad.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match=r"NNNN_name\.sql"):
        schema.known_migrations(tmp_path)
