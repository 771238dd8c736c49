"""API tokens: hashed at rest, managed by `auditq tokens`, and the dev admin token of `run`."""

from __future__ import annotations

import hashlib
import socket
import stat

import asyncpg
import pytest
import redis.asyncio as aioredis

from service.api.auth import authenticate
from service.api.errors import ApiError
from service.cli import serve
from service.queue import revocations
from service.settings import Settings
from service.store.tokens import create_token, revoke_token
from tests.support.admin_api import admin_events
from tests.support.cli import run_cli
from tests.support.queue import queued_events


async def test_tokens_are_stored_hashed(pg: asyncpg.Connection) -> None:
    token = await create_token(pg, name="ci", role="reader")
    rows = await pg.fetch("SELECT * FROM api_token")
    assert len(rows) == 1
    stored = " ".join(repr(value) for value in rows[0].values())
    assert token not in stored and token[3:] not in stored
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()
    principal = await authenticate(pg, f"Bearer {token}")
    assert (principal.name, principal.role) == ("ci", "reader")


async def test_cli_creates_lists_and_revokes_tokens(
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    assert await run_cli("tokens", "create", "--name", "ci-export", "--role", "reader") == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("aq_") and " " not in token
    assert (await authenticate(pg, f"Bearer {token}")).role == "reader"

    assert await run_cli("tokens", "create", "--name", "ci-export", "--role", "admin") == 1
    assert "ci-export" in capsys.readouterr().err  # an active token has that name

    assert await run_cli("tokens", "list") == 0
    listing = capsys.readouterr().out
    header, row = listing.splitlines()[:2]
    assert header.split() == ["NAME", "ROLE", "CREATED", "LAST", "USED", "REVOKED"]
    assert row.split()[:2] == ["ci-export", "reader"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert token not in listing and digest not in listing

    assert await run_cli("tokens", "revoke", "ci-export") == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(ApiError) as refused:
        await authenticate(pg, f"Bearer {token}")
    assert refused.value.status == 401
    # Announced in Redis, by hash, for APIs cut off from PostgreSQL; it expires on its own.
    mark = revocations.revoked_key(hashlib.sha256(token.encode()).digest())
    assert await revocations.is_revoked(redis, hashlib.sha256(token.encode()).digest())
    assert 0 < await redis.ttl(mark) <= revocations.MARK_TTL_S
    assert revocations.MARK_TTL_S > revocations.TRUST_OFFLINE_S

    assert await run_cli("tokens", "revoke", "ci-export") == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["auditq: no active token named 'ci-export'"]

    # Stored with the changes themselves, straight into PostgreSQL.
    audited = await admin_events(pg, "token.")
    assert [(e["action"], e["actor_id"]) for e in audited] == [
        ("token.created", "cli"),
        ("token.revoked", "cli"),
    ]
    assert audited[0]["metadata"] == {"name": "ci-export", "role": "reader"}
    assert await queued_events(redis, settings.queue) == []


async def test_cli_rejects_an_unknown_role(cli_env: None) -> None:
    with pytest.raises(SystemExit) as exited:
        await run_cli("tokens", "create", "--name", "x", "--role", "root")
    assert exited.value.code == 2


async def test_run_keeps_one_dev_admin_token_in_the_data_dir(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    token = await serve.ensure_dev_admin_token(settings)
    path = settings.data_dir / "admin-token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = await authenticate(pg, f"Bearer {token}")
    assert (principal.name, principal.role) == ("dev-admin", "admin")

    assert await serve.ensure_dev_admin_token(settings) == token  # a second start reuses it

    assert await revoke_token(pg, "dev-admin")
    renewed = await serve.ensure_dev_admin_token(settings)
    assert renewed != token
    assert path.read_text().strip() == renewed
    assert (await authenticate(pg, f"Bearer {renewed}")).role == "admin"

    path.unlink()  # a lost file: the old token of that name is revoked, a new one made
    again = await serve.ensure_dev_admin_token(settings)
    assert again != renewed
    with pytest.raises(ApiError):
        await authenticate(pg, f"Bearer {renewed}")


async def test_revoke_warns_when_redis_cannot_be_told(
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg: asyncpg.Connection,
) -> None:
    await create_token(pg, name="leaked", role="ingest")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AUDITQ_REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    assert await run_cli("tokens", "revoke", "leaked") == 0  # the database is what counts
    err = capsys.readouterr().err
    assert "revoked in the database, but not announced in Redis" in err
    assert await pg.fetchval("SELECT revoked_at IS NOT NULL FROM api_token WHERE name = 'leaked'")
