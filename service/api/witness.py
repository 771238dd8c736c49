"""A witness server (C2SP tlog-witness): cosigns a log's checkpoints only as they grow.

It keeps, per log origin, the last checkpoint it cosigned (a JSON file in its data
directory, replaced atomically); `POST /add-checkpoint` takes an old size, a consistency
proof and a new checkpoint, and answers a timestamped cosignature/v1 only when the new
checkpoint is signed by the log's key and extends the one it holds (docs/integrity.md,
"Witnesses").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.integrity import merkle, note

MAX_BODY_BYTES = 64 * 1024
MAX_PROOF_LINES = 63
SIZE_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class Witness:
    """A witness's identity and the logs it follows (origin -> the log's public key)."""

    name: str
    key: Ed25519PrivateKey
    logs: dict[str, Ed25519PublicKey]
    state_path: Path


def _read_state(path: Path) -> dict[str, dict[str, object]]:
    try:
        state: dict[str, dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return state


def _write_state(path: Path, state: dict[str, dict[str, object]]) -> None:
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def _text(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, text=text, content_type=content_type)


def _parse(body: str) -> tuple[int, list[bytes], note.Checkpoint]:
    """old size, proof, checkpoint of an add-checkpoint body (ValueError when malformed)."""
    head, sep, signed = body.partition("\n\n")
    if not sep:
        raise ValueError("the body is the old size line, proof lines, an empty line, a checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise ValueError("the first line is `old N`")
    size_text = lines[0][4:]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise ValueError("the old size is not a decimal number")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} proof lines")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except binascii.Error:
        raise ValueError("a proof line is not base64") from None
    return int(size_text), proof, note.parse(signed)


def witness_app(witness: Witness) -> web.Application:
    """The witness's HTTP app: POST /add-checkpoint."""
    lock = asyncio.Lock()  # checking the old size and storing the new one are one step

    async def add_checkpoint(request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _text(413, "the body is too large\n")
        try:
            old, proof, checkpoint = _parse(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return _text(400, f"{exc}\n")
        log_key = witness.logs.get(checkpoint.origin)
        if log_key is None:
            return _text(404, f"unknown log {checkpoint.origin}\n")
        try:
            note.verify(checkpoint, checkpoint.origin, log_key)
        except note.NoteError:
            return _text(403, "no signature of a key this witness trusts for that log\n")
        if old > checkpoint.size:
            return _text(400, "the old size exceeds the checkpoint's size\n")
        async with lock:
            state = _read_state(witness.state_path)
            held = state.get(checkpoint.origin, {"size": 0, "root": ""})
            held_size = int(str(held["size"]))
            if old != held_size:
                return _text(409, f"{held_size}\n", SIZE_TYPE)
            held_root = base64.b64decode(str(held["root"])) if held_size else merkle.EMPTY_ROOT
            if old == checkpoint.size and held_size and held_root != checkpoint.root:
                return _text(409, f"{held_size}\n", SIZE_TYPE)
            if old == 0 and proof:
                return _text(422, "a proof from size 0 must be empty\n")
            if old:
                try:
                    merkle.verify_consistency(
                        old, checkpoint.size, held_root, checkpoint.root, proof
                    )
                except merkle.ProofError as exc:
                    return _text(422, f"the consistency proof does not verify: {exc}\n")
            state[checkpoint.origin] = {
                "size": checkpoint.size,
                "root": base64.b64encode(checkpoint.root).decode(),
            }
            await asyncio.to_thread(_write_state, witness.state_path, state)
        line = note.cosign(checkpoint.body, witness.name, witness.key, int(time.time()))
        return _text(200, line)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes([web.post("/add-checkpoint", add_checkpoint)])
    return app
