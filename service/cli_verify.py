"""`auditq verify` and `auditq integrity public-key`: check the store, export the key."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from service import db
from service.errors import AuditqError, ConfigError
from service.integrity.keys import load_public_key, public_pem
from service.integrity.verify import verify
from service.settings import Settings
from service.store.seals import last_checkpoint, record_verification

logger = logging.getLogger(__name__)

EXIT_INTACT, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
MAX_KEPT_FINDINGS = 100  # of a run's findings kept in its stored result


class VerifyConnectionError(AuditqError):
    """The database could not be reached for verification."""


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time: {value!r} (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def public_key_path(settings: Settings, given: Path | None) -> Path:
    """The file to verify with: the one given, else the seal key (its public half)."""
    path = given or settings.seal_key_path
    if not path.exists():
        raise ConfigError(
            f"no key at {path}: pass --public-key FILE (from `auditq integrity public-key`)"
        )
    return path


async def run_verification(
    settings: Settings,
    *,
    public_key: Path | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    emit: Any = print,
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
        result: dict[str, Any] = {
            "intact": report.intact,
            "rows": report.rows,
            "checkpoints": report.checkpoints,
            "actions": report.actions,
            "findings": report.findings,
            "removed_by_retention": report.removed_by_retention,
            "anonymised": report.anonymised,
            "awaiting_seal": report.awaiting_seal,
            "summary": report.summary(),
            "lines": kept,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        # The runtime API role may record it; another role (the worker's) simply does not.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            result["id"] = await record_verification(conn, started_at=started, result=result)
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise VerifyConnectionError(f"connection to PostgreSQL lost: {exc}") from None
    finally:
        await rows_conn.close()
        await conn.close()
    emit(report.summary())
    return result


async def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    result = await run_verification(
        settings, public_key=args.public_key, since=args.since, until=args.until
    )
    sys.stdout.flush()
    return EXIT_INTACT if result["intact"] else EXIT_FINDINGS


async def cmd_public_key(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.seal_key_path
    if not path.exists():
        raise ConfigError(f"no seal key at {path} yet: the worker makes it when it first starts")
    print(public_pem(load_public_key(path)), end="")
    return 0


async def cmd_head(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url:
        raise ConfigError("no PostgreSQL: set AUDITQ_DATABASE_URL, or start `auditq run`")
    try:
        conn = await db.connect(settings.database_url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise VerifyConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        head = await last_checkpoint(conn)
    finally:
        await conn.close()
    if head is None:
        print("no checkpoint yet")
        return 0
    print(f"{head['n']} {bytes(head['hash']).hex()} {head['sealed_at'].isoformat()}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add `verify` and `integrity` to the `auditq` subcommands."""
    verify_help = (
        "Check every checkpoint and row: exit 0 intact, 1 findings, 2 usage/connection error."
    )
    parser = sub.add_parser("verify", help=verify_help, description=verify_help)
    parser.set_defaults(command=cmd_verify)
    parser.add_argument("--since", type=_timestamp, help="checkpoints sealed at or after T")
    parser.add_argument("--until", type=_timestamp, help="checkpoints sealed before T")
    parser.add_argument(
        "--public-key",
        type=Path,
        help="PEM public key (default: derived from AUDITQ_SEAL_KEY_FILE)",
    )
    integrity_help = "Integrity keys: print the public key that verifies checkpoints."
    integrity = sub.add_parser("integrity", help=integrity_help, description=integrity_help)
    actions = integrity.add_subparsers(dest="integrity_command", required=True, metavar="ACTION")
    key_help = "Print the PEM public key of AUDITQ_SEAL_KEY_FILE (all `auditq verify` needs)."
    actions.add_parser("public-key", help=key_help, description=key_help).set_defaults(
        command=cmd_public_key
    )
    head_help = "Print the last checkpoint: number, hash, time (keep it outside the database)."
    actions.add_parser("head", help=head_help, description=head_help).set_defaults(command=cmd_head)
