"""The seal key: an Ed25519 private key in a 0600 file, and the public key that verifies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.errors import ConfigError
from service.key_files import load_or_create

KEY_ID_BYTES = 8
K = TypeVar("K")


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the private key at `path`, making it (mode 0600) when the file is absent."""

    def make() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    return load_or_create(path, make, lambda pem: _load_private(pem, path))


def _load_private(data: bytes, path: Path) -> Ed25519PrivateKey:
    key = _pem(path, "private", lambda pem: serialization.load_pem_private_key(pem, None), data)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM public key, or derive it from a PEM private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        return _load_private(data, path).public_key()
    key = _pem(path, "public", serialization.load_pem_public_key, data)
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def _pem(path: Path, what: str, load: Callable[[bytes], K], data: bytes) -> K:
    """The key of PEM `data`; one clear error naming `path` when it holds none."""
    try:
        return load(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM {what} key: {exc}") from None


def public_pem(key: Ed25519PublicKey) -> str:
    """The public key as PEM text (what `auditq integrity public-key` prints)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> bytes:
    """The first 8 bytes of SHA-256 of the raw public key: which key signed a checkpoint."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES]


def signature_valid(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
