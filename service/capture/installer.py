"""Installing, removing and inspecting capture in an application's database."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import asyncpg

from service.errors import ConfigError
from service.events import ACTION_PATTERN
from service.producer.changes import DEFAULT_IGNORE, changes_between
from service.redaction import REDACTED

SCHEMA_SQL = (Path(__file__).parent / "schema.sql").read_text()
# Install and uninstall wait this long for a table lock, then give up: a DDL statement
# queued behind a long transaction would make every later query of the table wait too.
LOCK_TIMEOUT = "5s"
# pg_advisory_xact_lock key: one install or uninstall at a time per database ("auditqc").
INSTALL_LOCK_KEY = 0x61756469747163
ACTION = re.compile(ACTION_PATTERN)

SET_LOCK_TIMEOUT = "SELECT pg_catalog.set_config('lock_timeout', $1, true)"
TAKE_INSTALL_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock($1::bigint)"
FIND_TABLE = """
SELECT c.oid::regclass::text AS regclass, c.oid AS relid, c.relkind::text AS relkind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
"""
TABLE_COLUMNS = """
SELECT a.attname::text FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
SCHEMA_EXISTS = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'auditq_capture')
"""
OUTBOX_EXISTS = "SELECT pg_catalog.to_regclass('auditq_capture.outbox') IS NOT NULL"
RECORD_INSTALLATION = """
INSERT INTO auditq_capture.installation (schema_created) VALUES ($1) ON CONFLICT DO NOTHING
"""
INSTALL_TABLE = "SELECT auditq_capture.install_table($1::regclass, $2, $3, $4, $5)"
FIND_CAPTURED = """
SELECT table_id FROM auditq_capture.captured_tables WHERE schema_name = $1 AND table_name = $2
"""
PENDING_OF_TABLE = "SELECT count(*) FROM auditq_capture.outbox WHERE table_id = $1"
DISCARD_PENDING = "DELETE FROM auditq_capture.outbox WHERE table_id = $1"
# Identifiers are quoted by the server (format %I), never by this module.
DROP_TRIGGERS = """
SELECT pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %I.%I', trigger_name, $1::text, $2::text)
FROM pg_catalog.unnest(ARRAY['auditq_capture_insert', 'auditq_capture_update',
                             'auditq_capture_delete']) AS trigger_name
"""
DROP_FUNCTION = """
SELECT pg_catalog.format('DROP FUNCTION IF EXISTS auditq_capture.%I()', 'capture_' || $1::text)
"""
FORGET_TABLE = "DELETE FROM auditq_capture.captured_tables WHERE table_id = $1"
TABLES_LEFT = "SELECT count(*) FROM auditq_capture.captured_tables"
SCHEMA_CREATED = "SELECT schema_created FROM auditq_capture.installation"
# With the last table: everything install made in auditq_capture, and the schema if it made it.
DROP_OUTBOX = """
DROP FUNCTION IF EXISTS auditq_capture.install_table(regclass, text, text[], text[], text[]);
DROP TABLE IF EXISTS auditq_capture.outbox;
DROP TABLE IF EXISTS auditq_capture.captured_tables;
DROP TABLE IF EXISTS auditq_capture.installation;
"""
DROP_SCHEMA = "DROP SCHEMA IF EXISTS auditq_capture RESTRICT"
# `current`: the table's columns now, to tell when they changed since install (the trigger
# function names them); NULL when the table is gone.
STATUS = """
SELECT t.schema_name, t.table_name, t.entity, t.mask_columns,
       count(o.id) AS pending, min(o.captured_at) AS oldest,
       t.columns = (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
                    FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = pg_catalog.to_regclass(
                              pg_catalog.format('%I.%I', t.schema_name, t.table_name))
                      AND a.attnum > 0 AND NOT a.attisdropped) AS current
FROM auditq_capture.captured_tables t
LEFT JOIN auditq_capture.outbox o ON o.table_id = t.table_id
GROUP BY t.table_id ORDER BY t.schema_name, t.table_name
"""


@dataclasses.dataclass(frozen=True)
class InstallResult:
    """What install did to one table."""

    table: str
    entity: str
    masked: tuple[str, ...]  # columns whose values are never stored
    stripped: tuple[str, ...]  # columns never put in a diff (ignored or masked)


@dataclasses.dataclass(frozen=True)
class TableStatus:
    """One captured table and what of it still waits in the outbox."""

    table: str
    entity: str
    masked: tuple[str, ...]
    pending: int
    oldest: datetime | None
    current: bool  # its columns are those install saw (else: install again)


def parse_table(name: str) -> tuple[str, str]:
    """SCHEMA.TABLE (or TABLE, in public) as its two names."""
    schema, dot, table = name.partition(".")
    if not dot:
        schema, table = "public", name
    if not schema or not table:
        raise ConfigError(f"--table must be SCHEMA.TABLE, not {name!r}")
    return schema, table


async def install(
    url: str,
    table: str,
    *,
    entity: str | None = None,
    ignore: Iterable[str] = (),
    mask: Iterable[str] = (),
    extra_keys: frozenset[str] = frozenset(),
) -> InstallResult:
    """Capture `table`'s row changes into the outbox; again is harmless (new options apply)."""
    schema_name, table_name = parse_table(table)
    entity = entity or table_name.lower()
    if not ACTION.fullmatch(f"{entity}.created"):
        raise ConfigError(
            f"the entity {entity!r} cannot name events (`<entity>.created` must match "
            f"{ACTION_PATTERN}): pass --entity"
        )
    ignore_fields = frozenset(ignore)
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute(SET_LOCK_TIMEOUT, LOCK_TIMEOUT)
            await conn.execute(TAKE_INSTALL_LOCK, INSTALL_LOCK_KEY)
            found = await conn.fetchrow(FIND_TABLE, schema_name, table_name)
            if found is None or found["relkind"] not in ("r", "p"):
                raise ConfigError(f"no table {schema_name}.{table_name} in that database")
            columns = [r[0] for r in await conn.fetch(TABLE_COLUMNS, found["relid"])]
            unknown = sorted(set(mask) - set(columns))
            if unknown:
                raise ConfigError(
                    f"--mask names no column of {schema_name}.{table_name}: {', '.join(unknown)}"
                )
            stripped, sensitive = _stripped_columns(columns, ignore_fields, extra_keys)
            masked = [c for c in columns if c in set(mask) or c in sensitive]
            strip = [c for c in columns if c in stripped or c in masked]
            schema_existed = await conn.fetchval(SCHEMA_EXISTS)
            outbox_existed = await conn.fetchval(OUTBOX_EXISTS)
            await conn.execute(SCHEMA_SQL)
            if not outbox_existed:
                await conn.execute(RECORD_INSTALLATION, not schema_existed)
            await conn.execute(
                INSTALL_TABLE, found["regclass"], entity, sorted(ignore_fields), strip, masked
            )
    except asyncpg.PostgresError as exc:
        raise _clear(exc, f"installing capture on {table}") from None
    finally:
        await conn.close()
    return InstallResult(
        table=f"{schema_name}.{table_name}",
        entity=entity,
        masked=tuple(masked),
        stripped=tuple(strip),
    )


def _stripped_columns(
    columns: Sequence[str], ignore: frozenset[str], extra_keys: frozenset[str]
) -> tuple[set[str], set[str]]:
    """The columns a diff never shows, and those the redaction rules mask, by the very rules
    of changes_between (the relay applies them again to what the trigger keeps)."""
    before = {name: 0 for name in columns}
    after = {name: 1 for name in columns}
    changes = changes_between(
        before, after, ignore=DEFAULT_IGNORE | ignore, redact_extra_keys=extra_keys
    )
    shown = {change.field for change in changes}
    sensitive = {change.field for change in changes if change.old == REDACTED}
    return set(columns) - shown, sensitive


async def uninstall(url: str, table: str, *, discard_pending: bool = False) -> bool:
    """Remove what install made for `table` (the outbox too with the last table); True when
    the outbox went with it. Refused while changes of the table wait in the outbox."""
    schema_name, table_name = parse_table(table)
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute(SET_LOCK_TIMEOUT, LOCK_TIMEOUT)
            await conn.execute(TAKE_INSTALL_LOCK, INSTALL_LOCK_KEY)
            if not await conn.fetchval(OUTBOX_EXISTS):
                raise ConfigError(f"{schema_name}.{table_name} is not captured in that database")
            table_id = await conn.fetchval(FIND_CAPTURED, schema_name, table_name)
            if table_id is None:
                raise ConfigError(f"{schema_name}.{table_name} is not captured in that database")
            # The triggers go first: their lock waits for the table's writers, so every
            # change made before is in the outbox when it is counted.
            if await conn.fetchval(FIND_TABLE, schema_name, table_name) is not None:
                for (statement,) in await conn.fetch(DROP_TRIGGERS, schema_name, table_name):
                    await conn.execute(statement)
            pending = await conn.fetchval(PENDING_OF_TABLE, table_id)
            if pending and not discard_pending:
                raise ConfigError(
                    f"{pending} changes of {schema_name}.{table_name} are still in the outbox: "
                    "let `auditq capture relay` send them, then uninstall again "
                    "(or pass --discard-pending to lose them)"
                )
            await conn.execute(DISCARD_PENDING, table_id)
            await conn.execute(await conn.fetchval(DROP_FUNCTION, str(table_id)))
            await conn.execute(FORGET_TABLE, table_id)
            if await conn.fetchval(TABLES_LEFT):
                return False
            schema_created = await conn.fetchval(SCHEMA_CREATED)
            await conn.execute(DROP_OUTBOX)
            if schema_created:
                await conn.execute(DROP_SCHEMA)
            return True
    except asyncpg.PostgresError as exc:
        raise _clear(exc, f"removing capture from {table}") from None
    finally:
        await conn.close()


async def status(url: str) -> list[TableStatus]:
    """The captured tables of one database and their changes still in the outbox."""
    conn = await connect(url)
    try:
        if not await conn.fetchval(OUTBOX_EXISTS):
            return []
        rows = await conn.fetch(STATUS)
    except asyncpg.PostgresError as exc:
        raise _clear(exc, "reading the capture status") from None
    finally:
        await conn.close()
    return [
        TableStatus(
            table=f"{r['schema_name']}.{r['table_name']}",
            entity=r["entity"],
            masked=tuple(r["mask_columns"]),
            pending=r["pending"],
            oldest=r["oldest"],
            current=bool(r["current"]),
        )
        for r in rows
    ]


async def connect(url: str) -> asyncpg.Connection:
    """Connect to an application database; one clear error when it cannot be reached."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url, timeout=10)
    except asyncpg.PostgresError as exc:
        raise _clear(exc, "connecting to the application database") from None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the application database: {exc}") from None
    except ValueError as exc:  # a malformed URL
        raise ConfigError(f"not a PostgreSQL URL: {exc}") from None
    return conn


def _clear(exc: asyncpg.PostgresError, doing: str) -> ConfigError:
    """A database error as one line that says what to do."""
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return ConfigError(
            f"{doing}: {exc} (the installing role must own the table and may create a schema "
            "in the database: see docs/capture.md, Privileges)"
        )
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return ConfigError(f"{doing}: the table stayed busy for {LOCK_TIMEOUT}; try again")
    return ConfigError(f"{doing}: {exc}")
