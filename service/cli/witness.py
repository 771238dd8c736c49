"""`auditq witness`: run a witness server that cosigns checkpoints of the logs it follows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.api.witness import Witness, witness_app
from service.cli.common import add_command
from service.errors import ConfigError
from service.integrity import note
from service.integrity.keys import load_or_create_private_key, load_public_key
from service.settings import Settings


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _log(text: str) -> tuple[str, Path]:
    origin, sep, path = text.partition("=")
    if not sep or not origin or not path:
        raise argparse.ArgumentTypeError(f"not ORIGIN=PUBLIC_KEY_FILE: {text!r}")
    return origin, Path(path)


def _witness(args: argparse.Namespace) -> Witness:
    data: Path = args.data
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs: dict[str, Ed25519PublicKey] = {}
    for origin, path in args.log:
        logs[origin] = load_public_key(path)
    key = load_or_create_private_key(data / "witness-key")
    return Witness(name=args.name, key=key, logs=logs, state_path=data / "state.json")


async def cmd_witness(settings: Settings, args: argparse.Namespace) -> int:
    if "+" in args.name or any(c.isspace() for c in args.name):
        raise ConfigError(f"--name must hold no spaces and no '+': {args.name!r}")
    witness = await asyncio.to_thread(_witness, args)
    verifier = note.vkey(witness.name, witness.key.public_key(), note.COSIGNATURE_TYPE)
    await asyncio.to_thread((args.data / "witness.vkey").write_text, verifier + "\n")
    runner = web.AppRunner(witness_app(witness), access_log=None)
    await runner.setup()
    host, port = args.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    print(f"witness {witness.name} on http://{host}:{port}/add-checkpoint", flush=True)
    print(f"its verifier key (auditq verify-receipt --witness-key): {verifier}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    sys.stdout.flush()
    return 0


def add_parsers(sub: Any) -> None:
    """Add `witness` to the `auditq` subcommands."""
    text = (
        "Run a witness (C2SP tlog-witness): cosign the checkpoints of the logs given, only "
        "as they grow (POST /add-checkpoint)."
    )
    parser = add_command(sub, "witness", cmd_witness, text)
    parser.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--data", type=Path, required=True, metavar="DIR",
        help="its key (witness-key, made 0600) and the last checkpoint cosigned per log",
    )  # fmt: skip
    parser.add_argument(
        "--log", type=_log, action="append", required=True, metavar="ORIGIN=PUBLIC_KEY_FILE",
        help="a log to follow: its origin and its PEM public key (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="auditq-witness", help="the witness's key name (default auditq-witness)"
    )
