"""`auditq verify` and `auditq integrity public-key`: check the store, export the key."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from service.cli.common import add_command, add_group
from service.errors import ConfigError
from service.integrity import note
from service.integrity.keys import load_public_key, public_pem
from service.ops.verification import (
    VerifyConnectionError,
    run_verification,
)
from service.settings import Settings
from service.store import db, tlog

logger = logging.getLogger(__name__)

EXIT_INTACT, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time: {value!r} (e.g. 2026-01-31T12:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    head = _head(args.head) if args.head else None
    result = await run_verification(
        settings, public_key=args.public_key, since=args.since, until=args.until, head=head
    )
    sys.stdout.flush()
    return EXIT_INTACT if result["intact"] else EXIT_FINDINGS


def _head(path: Path) -> note.Checkpoint:
    """A checkpoint kept elsewhere (from `auditq integrity head`, or cosigned by a witness)."""
    try:
        return note.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the head {path}: {exc}") from None
    except note.NoteError as exc:
        raise ConfigError(f"{path} is not a checkpoint: {exc}") from None


async def cmd_public_key(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.seal_key_path
    if not path.exists():
        raise ConfigError(f"no seal key at {path} yet: the worker makes it when it first starts")
    key = load_public_key(path)
    if args.vkey:
        print(note.vkey(_origin(settings), key))
        return 0
    print(public_pem(key), end="")
    return 0


def _origin(settings: Settings) -> str:
    """The log's origin: AUDITQ_LOG_ORIGIN, else auditq/<the database name of the URL>."""
    if settings.log_origin:
        return settings.log_origin
    name = urlsplit(settings.database_url or "").path.lstrip("/")
    if not name:
        raise ConfigError("set AUDITQ_LOG_ORIGIN or AUDITQ_DATABASE_URL: the vkey names the log")
    return f"auditq/{name}"


async def cmd_head(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url:
        raise ConfigError("no PostgreSQL: set AUDITQ_DATABASE_URL, or start `auditq run`")
    try:
        conn = await db.connect(settings.database_url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise VerifyConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        head = await tlog.last_checkpoint(conn)
        signed = (
            None if head is None else await tlog.checkpoint_with_cosignatures(conn, head["size"])
        )
    finally:
        await conn.close()
    if signed is None:  # nothing to keep yet: said apart from the output, which stays empty
        print(
            "no checkpoint has been signed yet: the sealer signs one when rows wait",
            file=sys.stderr,
        )
        return 0
    print(signed, end="")
    return 0


def add_parsers(sub: Any) -> None:
    """Add `verify` and `integrity` to the `auditq` subcommands."""
    verify_help = (
        "Check every checkpoint and row: exit 0 intact, 1 findings, 2 usage/connection error."
    )
    parser = add_command(sub, "verify", cmd_verify, verify_help)
    parser.add_argument("--since", type=_timestamp, help="checkpoints sealed at or after T")
    parser.add_argument("--until", type=_timestamp, help="checkpoints sealed before T")
    parser.add_argument(
        "--head",
        type=Path,
        metavar="FILE",
        help="a checkpoint kept elsewhere (`auditq integrity head`): the store must extend it",
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        help="PEM public key (default: derived from AUDITQ_SEAL_KEY_FILE)",
    )
    integrity_help = "Integrity keys: print the public key that verifies checkpoints."
    actions = add_group(sub, "integrity", integrity_help)
    key_help = "Print the PEM public key of AUDITQ_SEAL_KEY_FILE (all `auditq verify` needs)."
    public_key = add_command(actions, "public-key", cmd_public_key, key_help)
    public_key.add_argument(
        "--vkey",
        action="store_true",
        help="print it as a C2SP verifier key (ORIGIN+KEYID+BASE64), as other ecosystems' "
        "note and witness tools take it",
    )
    head_help = (
        "Print the latest signed checkpoint (a C2SP note, with cosignatures): keep it "
        "outside the database and check the store extends it with `auditq verify --head FILE`."
    )
    add_command(actions, "head", cmd_head, head_help)
