"""The sealer's own memory: the last checkpoint it signed, in a file outside the database."""

from __future__ import annotations

import os
from pathlib import Path

from service.integrity import note


class SealingStopped(Exception):
    """The store's tree does not extend the last signed checkpoint: nothing is signed."""


def read(path: Path) -> note.Checkpoint | None:
    """The last checkpoint this sealer signed, or None before its first."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return note.parse(text)


def write(path: Path, signed_note: str) -> None:
    """Replace the state with `signed_note`, atomically (a crash leaves the old or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(signed_note)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
