"""`auditq verify-receipt`: check an event's receipt offline, with only public keys."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.errors import ConfigError
from service.integrity import note
from service.integrity.keys import load_public_key
from service.integrity.receipt import ReceiptError, verify
from service.settings import Settings
from service.store import db
from service.store.receipts import AwaitingCheckpoint, receipt_of

EXIT_VALID, EXIT_INVALID = 0, 1


def _witness_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """A witness's verifier key (NAME+KEYID+BASE64), given as such or as a file holding one."""
    path = Path(text)
    if "+" not in text and path.exists():
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the witness key {path}: {exc.strerror}") from None
    try:
        name, key, kind = note.parse_vkey(text)
    except (note.NoteError, ValueError) as exc:
        raise ConfigError(f"--witness-key {text!r}: {exc}") from None
    if kind != note.COSIGNATURE_TYPE:
        raise ConfigError(f"--witness-key {name}: not a cosignature/v1 key (type 0x04)")
    return name, key


def _read(file: str) -> str:
    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the receipt {file}: {reason}") from None


async def cmd_verify_receipt(settings: Settings, args: argparse.Namespace) -> int:
    return _verify_receipt(settings, args)  # offline and quick: no event loop work to share


def _verify_receipt(settings: Settings, args: argparse.Namespace) -> int:
    key_path: Path = args.public_key or settings.seal_key_path
    if not key_path.exists():
        raise ConfigError(
            f"no public key at {key_path} (give one with --public-key FILE, "
            "from `auditq integrity public-key`)"
        )
    log_key = load_public_key(key_path)
    witnesses = [_witness_key(text) for text in args.witness_key or []]
    text = _read(args.file)
    try:
        receipt: Any = json.loads(text)
        checkpoint = verify(receipt, log_key=log_key, witness_keys=witnesses)
    except (ValueError, RecursionError) as exc:
        reason = exc if isinstance(exc, ReceiptError) else "not a JSON receipt"
        print(f"invalid: {reason}")
        return EXIT_INVALID
    cosigned = f", cosigned by {', '.join(n for n, _ in witnesses)}" if witnesses else ""
    print(
        f"valid: event {receipt['item'].get('id')} is leaf {receipt['leaf_index']} of "
        f"{checkpoint.origin} at tree size {checkpoint.size}{cosigned}"
    )
    return EXIT_VALID


def _event_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an event id (a UUID): {text!r}") from None


async def cmd_proof(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    try:
        found = await receipt_of(conn, args.event_id)
    except AwaitingCheckpoint as exc:
        print(f"auditq: {exc}: try again after the next seal", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if found is None:
        print(f"auditq: no audit log has id {args.event_id}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0


async def _connect(settings: Settings) -> asyncpg.Connection:
    url = settings.require_database()
    try:
        return await db.connect(url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ConfigError(f"cannot connect to PostgreSQL: {exc}") from None


def add_parsers(sub: Any) -> None:
    """Add `verify-receipt` and `proof` to the `auditq` subcommands."""
    proof_help = "Print an event's receipt (JSON): check it anywhere with `auditq verify-receipt`."
    proof = sub.add_parser("proof", help=proof_help, description=proof_help)
    proof.set_defaults(command=cmd_proof)
    proof.add_argument("event_id", metavar="EVENT_ID", type=_event_id, help="the event's id")
    text = (
        "Check an event's receipt offline (no database, no network): exit 0 valid, "
        "1 invalid (one line saying what), 2 usage."
    )
    parser = sub.add_parser("verify-receipt", help=text, description=text)
    parser.set_defaults(command=cmd_verify_receipt)
    parser.add_argument("file", metavar="FILE", help="the receipt (JSON), or - for stdin")
    parser.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the log's public key (default: derived from AUDITQ_SEAL_KEY_FILE)",
    )
    parser.add_argument(
        "--witness-key",
        action="append",
        metavar="KEY",
        help="require a valid cosignature of this witness (verifier key NAME+KEYID+BASE64, "
        "or a file holding one; repeatable)",
    )
