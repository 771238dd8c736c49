"""A verification of the store (docs/integrity.md), run for `auditq verify` and the API, its
result kept for GET /api/v1/admin/integrity."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from service.errors import AuditqError, ConfigError
from service.integrity import note
from service.integrity.keys import load_public_key
from service.integrity.logverify import verify_log
from service.integrity.verify import verify
from service.own_events import system_by
from service.settings import Settings
from service.store import db, logcheck
from service.store.leaves import row_leaf_data
from service.store.seals import NEW_ACTIONS, NEW_ROWS, record_verification

MAX_KEPT_FINDINGS = 100  # of a run's findings kept in its stored result


class VerifyConnectionError(AuditqError):
    """The database could not be reached for verification."""


def public_key_path(settings: Settings, given: Path | None) -> Path:
    """The file to verify with: the one given, else the seal key (its public half)."""
    path = given or settings.seal_key_path
    if not path.exists():
        raise ConfigError(
            # Not "{path}: pass …": after a path ending in seal-key, log redaction would
            # read the word as that key's value.
            f"no key at {path} (give one with --public-key FILE, from "
            "`auditq integrity public-key`)"
        )
    return path


async def run_verification(
    settings: Settings,
    *,
    public_key: Path | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    head: note.Checkpoint | None = None,
    emit: Any = print,
    by: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Verify the store of `settings`; keep and return the result (findings capped)."""
    if not settings.database_url:
        raise ConfigError(
            "no PostgreSQL to verify: set AUDITQ_DATABASE_URL, or start `auditq run` "
            f"(its URLs are then read from {settings.env_file})"
        )
    key = load_public_key(public_key_path(settings, public_key))
    kept: list[str] = []

    def collect(line: str) -> None:
        if len(kept) < MAX_KEPT_FINDINGS:
            kept.append(line)
        emit(line)

    started = datetime.now(UTC)
    try:
        conn = await db.connect(settings.database_url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise VerifyConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        # The rows stream on a second connection with no command timeout: a long COPY.
        rows_conn = await asyncpg.connect(settings.database_url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        await conn.close()
        raise VerifyConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        report = await verify(
            conn,
            key,
            rows_conn=rows_conn,
            since=since,
            until=until,
            seal_interval_s=settings.seal_interval_s,
            emit=collect,
        )
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            log = await verify_log(
                conn,
                key,
                row_leaf_of=row_leaf_data,
                rows_query=NEW_ROWS,
                actions_query=NEW_ACTIONS,
                head=head,
                emit=collect,
                seal_interval_s=settings.seal_interval_s,
                v1_until=-1 if report.rows_until is None else report.rows_until,
                rows_check=logcheck.rows_check(settings.database_url),
            )
        report.findings += log.findings
        if report.rows_until is not None:  # the log's rows past the v1 pass
            report.rows += log.rows_beyond
            report.awaiting_seal += log.awaiting_seal
        summary = (
            f"{report.summary()}; the log: {log.leaves} leaves, {log.checkpoints} checkpoints, "
            f"{log.erased} rows erased, {log.removed_by_retention} removed by retention"
        )
        result: dict[str, Any] = {
            "intact": report.findings == 0,
            "rows": report.rows,
            "checkpoints": report.checkpoints,
            "actions": report.actions,
            "findings": report.findings,
            "removed_by_retention": report.removed_by_retention,
            "anonymised": report.anonymised,
            "awaiting_seal": report.awaiting_seal,
            "summary": summary,
            "log_leaves": log.leaves,
            "log_checkpoints": log.checkpoints,
            "lines": kept,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        # The runtime API role may record it; another role (the worker's) simply does not.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            result["id"] = await record_verification(
                conn,
                started_at=started,
                result=result,
                by=by or system_by(),
            )
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise VerifyConnectionError(f"connection to PostgreSQL lost: {exc}") from None
    finally:
        await rows_conn.close()
        await conn.close()
    emit(summary)
    return result
