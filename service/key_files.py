"""Key files: a secret kept in a 0600 file of its own (never in the database), made once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def create_private(path: Path, data: bytes) -> bool:
    """Write `data` to a new file at `path`, mode 0600; False when there is one already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return True


def load_or_create(path: Path, make: Callable[[], bytes], read: Callable[[bytes], T]) -> T:
    """`read` of the file at `path`, made from `make()` first when it is absent. O_EXCL: two
    processes starting at once end with one key, the loser reads the winner's."""
    try:
        return read(path.read_bytes())
    except FileNotFoundError:
        pass
    data = make()
    if not create_private(path, data):
        return read(path.read_bytes())
    return read(data)
