"""The key of subjects' pseudonyms (contract §9): 32 random bytes in a 0600 file, never in
the database, read by the API (to name the subject it erases) and the workers (to
pseudonymise erased subjects' later events); no database role can read it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from service.errors import ConfigError

KEY_BYTES = 32


def load_or_create_subject_key(path: Path) -> bytes:
    """Read the key at `path`, making it (mode 0600) when the file is absent."""
    try:
        return _checked(path.read_bytes(), path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two processes starting at once end with one key, the loser reads it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _checked(path.read_bytes(), path)
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


def keep_moved_key(path: Path, key: bytes) -> None:
    """Keep `key` (moved out of an older database) at `path`, mode 0600; the file may hold it
    already, but no other key (the pseudonyms of erased subjects would change)."""
    if path.exists():
        if path.read_bytes() != key:
            raise ConfigError(
                f"{path} holds another subject key than the database: keep the database's "
                "(move the file away) or the pseudonyms of erased subjects change"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(_checked(key, path))


def load_subject_key(path: Path) -> bytes:
    """Read the key at `path` (never made here: a worker must not mint a key of its own)."""
    try:
        return _checked(path.read_bytes(), path)
    except FileNotFoundError:
        raise ConfigError(
            f"no subject key at {path}: erased subjects' events cannot be pseudonymised; "
            "give the workers the API's key (AUDITQ_SUBJECT_KEY_FILE)"
        ) from None


def _checked(key: bytes, path: Path) -> bytes:
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{path} is not a subject key ({KEY_BYTES} bytes or more)")
    return key
