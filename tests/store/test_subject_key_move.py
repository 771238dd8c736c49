"""`auditq migrate` moves the key of pseudonyms out of a store of an earlier release."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncpg
import pytest

from service.errors import ConfigError
from service.store import db

OLD_KEY = b"k" * 32


async def test_the_key_leaves_the_database_for_its_file(
    pg: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    await pg.execute("INSERT INTO api_secret (name, secret) VALUES ('subject', $1)", OLD_KEY)
    with pytest.raises(ConfigError, match="AUDITQ_SUBJECT_KEY_FILE"):
        await db.migrate(database_url)  # nowhere to put it: nothing changes
    other = tmp_path / "other-key"
    other.write_bytes(b"x" * 32)
    with pytest.raises(ConfigError, match="another subject key"):
        await db.migrate(database_url, subject_key_path=other)
    assert await pg.fetchval("SELECT secret FROM api_secret WHERE name = 'subject'") == OLD_KEY
    path = tmp_path / "keys" / "subject-key"
    await db.migrate(database_url, subject_key_path=path)
    assert path.read_bytes() == OLD_KEY
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert await pg.fetchval("SELECT count(*) FROM api_secret WHERE name = 'subject'") == 0
    await db.migrate(database_url, subject_key_path=path)  # again: nothing to move
    assert path.read_bytes() == OLD_KEY
