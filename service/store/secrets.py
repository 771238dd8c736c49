"""Secrets made once per database (schema.sql fills `api_secret`): every replica reads the same."""

from __future__ import annotations

from service.errors import ConfigError
from service.store.db import Conn

SELECT_SECRET = "SELECT secret FROM api_secret WHERE name = $1"
# The worker reads the provenance key and no other secret (schema.sql, "Least privilege").
SELECT_PROVENANCE_KEY = "SELECT secret FROM provenance_key"


async def read_secret(conn: Conn, name: str) -> bytes:
    """The secret `name`; a clear error when the schema has not made it."""
    secret = await conn.fetchval(SELECT_SECRET, name)
    if secret is None:
        raise ConfigError(f"the database has no {name} secret: run `auditq migrate`")
    return bytes(secret)


async def read_provenance_key(conn: Conn) -> bytes:
    """The key of provenance tags (service/queue/jobs.py), the one secret the worker may read."""
    secret = await conn.fetchval(SELECT_PROVENANCE_KEY)
    if secret is None:
        raise ConfigError("the database has no provenance secret: run `auditq migrate`")
    return bytes(secret)
