"""The store's schema version: schema.sql for a new store, numbered migrations for an older one.

`migrations/NNNN_name.sql` are forward-only steps, each bringing a store at the schema before
it to the schema after it; `0000_base.sql` is the first released schema, never applied (a
store made before versions were recorded counts as it). A store records the versions it has
in `auditq_schema_version`; a new store gets schema.sql, which is the result of every
migration, and records them all.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from pathlib import Path

import asyncpg

from service.errors import ConfigError

# schema.sql lives at the top of the repository (the card fixes it there); this package holds
# a link to it, which a wheel carries as a copy, so `pip install .` ships the schema too.
SCHEMA_PATH = Path(__file__).with_name("schema.sql")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
BASE_VERSION = 0

HAS_VERSION_TABLE = "SELECT to_regclass('auditq_schema_version') IS NOT NULL"
HAS_AUDIT_LOG = "SELECT to_regclass('audit_log') IS NOT NULL"
APPLIED = "SELECT version, name, applied_at FROM auditq_schema_version ORDER BY version"
RECORD = """
INSERT INTO auditq_schema_version (version, name) VALUES ($1, $2)
ON CONFLICT (version) DO NOTHING
"""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered file of migrations/."""

    version: int
    name: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclasses.dataclass(frozen=True)
class VersionState:
    """One known version and whether (and when) a store has it."""

    migration: Migration
    applied: bool
    applied_at: datetime | None  # None when applied before versions were recorded


@dataclasses.dataclass(frozen=True)
class Upgrade:
    """What `upgrade` did: made a new store from schema.sql, or ran these migrations."""

    new_store: bool
    ran: list[Migration]
    version: Migration  # the store's version now


def known_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every NNNN_name.sql of `directory`, by version; two files of one version are an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if match is None:
            raise ConfigError(f"{path.name}: a migration is named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise ConfigError(f"two migrations of version {version}: {found[version].path.name}")
        found[version] = Migration(version, match[2], path)
    return [found[version] for version in sorted(found)]


async def _applied(conn: asyncpg.Connection) -> dict[int, datetime | None] | None:
    """The versions the store has, when they were applied; None for an empty database."""
    if await conn.fetchval(HAS_VERSION_TABLE):
        return {row["version"]: row["applied_at"] for row in await conn.fetch(APPLIED)}
    if await conn.fetchval(HAS_AUDIT_LOG):
        return {BASE_VERSION: None}  # made before versions were recorded: the base
    return None


def _check_not_newer(applied: dict[int, datetime | None], known: list[Migration]) -> None:
    unknown = sorted(set(applied) - {m.version for m in known})
    if unknown:
        raise ConfigError(
            f"the store has schema version {unknown[-1]:04d}, which this auditq does not know:"
            " run a newer auditq"
        )


async def upgrade(conn: asyncpg.Connection) -> Upgrade:
    """Bring the store to the current schema in the caller's transaction; return what ran."""
    known = known_migrations()
    applied = await _applied(conn)
    if applied is None:
        await conn.execute(SCHEMA_PATH.read_text())
        for migration in known:
            await conn.execute(RECORD, migration.version, migration.name)
        return Upgrade(new_store=True, ran=[], version=known[-1])
    _check_not_newer(applied, known)
    ran = []
    for migration in known:
        if migration.version in applied or migration.version == BASE_VERSION:
            continue
        await conn.execute(migration.path.read_text())
        # 0001 makes the version table, so every migration is recorded as it runs.
        await conn.execute(RECORD, migration.version, migration.name)
        ran.append(migration)
    if applied.get(BASE_VERSION, 0) is None:  # a store of the base, recorded as one now
        await conn.execute(RECORD, BASE_VERSION, known[0].name)
    return Upgrade(new_store=False, ran=ran, version=known[-1])


async def status(conn: asyncpg.Connection) -> list[VersionState] | None:
    """Every known version, applied or pending; None for an empty database."""
    known = known_migrations()
    applied = await _applied(conn)
    if applied is None:
        return None
    _check_not_newer(applied, known)
    return [VersionState(m, m.version in applied, applied.get(m.version)) for m in known]
