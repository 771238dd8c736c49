"""Rows to seal and verify: store realistic rows, seal them all, run verify (of the v1
checkpoints, of the log), log in as a role."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.events import AuditEvent, Entity, finalize
from service.integrity import note
from service.integrity.logverify import LogReport, RowsCheck, verify_log
from service.integrity.verify import Report, verify
from service.store.leaves import row_leaf_data
from service.store.seals import NEW_ACTIONS, NEW_ROWS, seal_once
from workers.writer import write_events


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
    await write_events(pg, events, received_via="redis:test", keyed=True)
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


async def run_verify_log(
    pg: asyncpg.Connection,
    key: Ed25519PrivateKey,
    head: note.Checkpoint | None = None,
    rows_check: RowsCheck | None = None,
) -> tuple[LogReport, list[str]]:
    """The transparency log verified as `auditq verify` reads it, in one snapshot."""
    lines: list[str] = []
    async with pg.transaction(isolation="repeatable_read", readonly=True):
        report = await verify_log(
            pg, key.public_key(), row_leaf_of=row_leaf_data, rows_query=NEW_ROWS,
            actions_query=NEW_ACTIONS, head=head, emit=lines.append, rows_check=rows_check,
        )  # fmt: skip
    return report, lines


def url_as(database_url: str, role: str, password: str) -> str:
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
