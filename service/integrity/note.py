"""C2SP signed notes with Ed25519: tlog-checkpoint bodies, their signatures and cosignatures.

Written here rather than taken from a library: no maintained Python package implements
C2SP signed-note, tlog-checkpoint and tlog-cosignature (they are a few lines over
`cryptography`'s Ed25519).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DASH = "\u2014"  # signature lines start with an em dash and a space
ED25519_TYPE = 0x01  # C2SP signed-note: an Ed25519 note signature
COSIGNATURE_TYPE = 0x04  # C2SP tlog-cosignature: a timestamped Ed25519 cosignature/v1
_MAX_BODY_BYTES = 1 << 20


class NoteError(ValueError):
    """A note, checkpoint or signature is malformed or does not verify."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, key: Ed25519PublicKey, kind: int = ED25519_TYPE) -> bytes:
    """SHA-256(name || "\\n" || kind || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + raw_public(key)).digest()[:4]


def vkey(name: str, key: Ed25519PublicKey, kind: int = ED25519_TYPE) -> str:
    """The C2SP verifier key string: name+hex(key id)+base64(kind || public key)."""
    encoded = base64.b64encode(bytes([kind]) + raw_public(key)).decode()
    return f"{name}+{key_id(name, key, kind).hex()}+{encoded}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey, int]:
    """(name, public key, kind) of a verifier key string."""
    parts = text.strip().split("+", 2)  # a name holds no "+", base64 may
    if len(parts) != 3:
        raise NoteError("a verifier key is NAME+KEYID+BASE64")
    name, hex_id, encoded = parts
    try:
        raw = base64.b64decode(encoded, validate=True)
        wanted_id = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise NoteError("a verifier key's key id or key is not hex / base64") from None
    if len(raw) != 33 or raw[0] not in (ED25519_TYPE, COSIGNATURE_TYPE):
        raise NoteError("a verifier key must hold an Ed25519 key (type 0x01 or 0x04)")
    key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_id(name, key, raw[0]) != wanted_id:
        raise NoteError(f"verifier key {name}: the key id does not match the key")
    return name, key, raw[0]


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The tlog-checkpoint note text: origin, size, base64 root, each ending in a newline."""
    if not origin or "\n" in origin:
        raise NoteError("a checkpoint origin is one non-empty line")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


@dataclass(frozen=True)
class Signature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes  # for a cosignature: the 8-byte timestamp and the 64-byte signature


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint note: its body's three lines and its signature lines."""

    origin: str
    size: int
    root: bytes
    body: str
    signatures: tuple[Signature, ...]


def sign_line(name: str, kid: bytes, signature: bytes) -> str:
    return f"{DASH} {name} {base64.b64encode(kid + signature).decode()}\n"


def sign(body: str, name: str, key: Ed25519PrivateKey) -> str:
    """The signed note: body, an empty line, and the Ed25519 signature line of `name`."""
    signature = key.sign(body.encode())
    return body + "\n" + sign_line(name, key_id(name, key.public_key()), signature)


def cosignature_message(body: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, the time line, the checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(body: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """A cosignature/v1 line of a witness `name` over a checkpoint body, at `timestamp` (s)."""
    signed = key.sign(cosignature_message(body, timestamp))
    kid = key_id(name, key.public_key(), COSIGNATURE_TYPE)
    return sign_line(name, kid, struct.pack("!Q", timestamp) + signed)


def parse(note: str) -> Checkpoint:
    """Split a checkpoint note into its body and signature lines (nothing verified yet)."""
    if len(note) > _MAX_BODY_BYTES:
        raise NoteError("the note is too long")
    body, sep, rest = note.partition("\n\n")
    if not sep:
        raise NoteError("a signed note has its body, an empty line, then signature lines")
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise NoteError("a checkpoint body has at least three lines: origin, size, root")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError("the checkpoint's size line is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise NoteError("the checkpoint's root line is not base64") from None
    if len(root) != 32:
        raise NoteError("the checkpoint's root is not 32 bytes")
    if not rest.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    signatures = []
    for line in rest[:-1].split("\n"):
        if not line.startswith(DASH + " "):
            raise NoteError("a signature line starts with an em dash and a space")
        name, _, encoded = line[2:].rpartition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError("a signature line is not base64") from None
        if not name or len(raw) < 5:
            raise NoteError("a signature line has a name and base64(key id || signature)")
        signatures.append(Signature(name=name, key_id=raw[:4], signature=raw[4:]))
    return Checkpoint(
        origin=origin,
        size=int(size_text),
        root=root,
        body=body,
        signatures=tuple(signatures),
    )


def verify(checkpoint: Checkpoint, name: str, key: Ed25519PublicKey) -> None:
    """Raise NoteError unless `checkpoint` carries a valid signature of `name` with `key`."""
    kid = key_id(name, key)
    candidates = [s for s in checkpoint.signatures if s.name == name and s.key_id == kid]
    if not candidates:
        raise NoteError(f"the checkpoint has no signature of {name} with this key")
    for s in candidates:
        try:
            key.verify(s.signature, checkpoint.body.encode())
        except InvalidSignature:
            continue
        return
    raise NoteError(f"the checkpoint's signature of {name} does not verify")


def verify_cosignature(checkpoint: Checkpoint, name: str, key: Ed25519PublicKey) -> int:
    """The timestamp of the valid cosignature/v1 of witness `name`, else raise NoteError."""
    kid = key_id(name, key, COSIGNATURE_TYPE)
    candidates = [s for s in checkpoint.signatures if s.name == name and s.key_id == kid]
    if not candidates:
        raise NoteError(f"the checkpoint has no cosignature of witness {name}")
    for s in candidates:
        if len(s.signature) != 72:
            continue
        (timestamp,) = struct.unpack("!Q", s.signature[:8])
        try:
            key.verify(s.signature[8:], cosignature_message(checkpoint.body, timestamp))
        except InvalidSignature:
            continue
        return int(timestamp)
    raise NoteError(f"the cosignature of witness {name} does not verify")
