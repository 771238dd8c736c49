"""The key of subjects' pseudonyms (contract §9): 32 random bytes in a 0600 file, never in
the database, read by the API (to name the subject it erases) and the workers (to
pseudonymise erased subjects' later events); no database role can read it."""

from __future__ import annotations

import secrets
from pathlib import Path

from service.errors import ConfigError
from service.key_files import create_private, load_or_create

KEY_BYTES = 32


def load_or_create_subject_key(path: Path) -> bytes:
    """Read the key at `path`, making it (mode 0600) when the file is absent."""
    return load_or_create(
        path, lambda: secrets.token_bytes(KEY_BYTES), lambda key: _checked(key, path)
    )


def keep_moved_key(path: Path, key: bytes) -> None:
    """Keep `key` (moved out of an older database) at `path`, mode 0600; the file may hold it
    already, but no other key (the pseudonyms of erased subjects would change)."""
    if create_private(path, _checked(key, path)):
        return
    if path.read_bytes() != key:
        raise ConfigError(
            f"{path} holds another subject key than the database: keep the database's "
            "(move the file away) or the pseudonyms of erased subjects change"
        )


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
