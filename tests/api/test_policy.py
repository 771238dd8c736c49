"""The store's policy: `auditq policy show|set` as the owner and GET /api/v1/admin/policy."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.support.admin_api import Tokens, error_of
from tests.support.cli import run_cli
from tests.support.integrity import url_as


async def test_the_policy_is_shown_to_readers_and_set_only_by_the_owner(
    api: TestClient[Any, Any],
    tokens: Tokens,
    pg: asyncpg.Connection,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    response = await api.get("/api/v1/admin/policy", headers=tokens.reader)
    assert response.status == 200
    assert await response.json() == {"retention_days": None, "set_at": None, "set_by": None}
    assert (await api.get("/api/v1/admin/policy")).status == 401
    await error_of(await api.post("/api/v1/admin/policy", headers=tokens.admin), 405)

    # The CLI with the owner's URL (the suite's migrating role).
    assert await run_cli("policy", "set", "--retention-days", "400") == 0
    assert "retention: 400 days" in capsys.readouterr().out
    body = await (await api.get("/api/v1/admin/policy", headers=tokens.reader)).json()
    assert body["retention_days"] == 400
    assert body["set_by"] == await pg.fetchval("SELECT session_user")
    assert body["set_at"] is not None
    assert await pg.fetchval("SELECT count(*) FROM store_action WHERE action = 'policy.set'") == 1
    assert await run_cli("policy", "show") == 0
    shown = capsys.readouterr().out
    assert "retention: 400 days" in shown and "subject entity types: not pinned" in shown
    assert await run_cli("policy", "set", "--subject-entity-types", "user, customer") == 0
    assert "subject entity types: customer, user" in capsys.readouterr().out
    assert await pg.fetchval("SELECT subject_entity_types FROM store_policy") == [
        "customer",
        "user",
    ]
    assert await run_cli("policy", "set") == 2
    assert "say what to set" in capsys.readouterr().err

    # Bad input: one line, exit 2; nothing changes.
    for bad in ("0", "-3", "forever"):
        with pytest.raises(SystemExit) as exit_info:
            await run_cli("policy", "set", "--retention-days", bad)
        assert exit_info.value.code == 2
    capsys.readouterr()

    # A runtime role may not set it: one clear line, non-zero exit, the policy unchanged.
    await pg.execute("ALTER ROLE auditq_api LOGIN PASSWORD 'policy-test'")
    monkeypatch.setenv("AUDITQ_DATABASE_URL", url_as(database_url, "auditq_api", "policy-test"))
    assert await run_cli("policy", "set", "--retention-days", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("auditq: only the schema's owner sets the policy") and "\n" not in err
    assert await run_cli("policy", "set", "--retention-days", "none") == 2
    assert await pg.fetchval("SELECT retention_days FROM store_policy") == 400


async def test_migrate_pins_its_subject_types_on_a_store_without_them(
    pg: asyncpg.Connection, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await pg.fetchval("SELECT subject_entity_types FROM store_policy") is None
    monkeypatch.setenv("AUDITQ_SUBJECT_ENTITY_TYPES", "user,customer")
    assert await run_cli("migrate") == 0
    assert await pg.fetchval("SELECT subject_entity_types FROM store_policy") == [
        "customer",
        "user",
    ]
    monkeypatch.setenv("AUDITQ_SUBJECT_ENTITY_TYPES", "user,customer,project")
    assert await run_cli("migrate") == 0  # pinned once: a later setting does not widen it
    assert await pg.fetchval("SELECT subject_entity_types FROM store_policy") == [
        "customer",
        "user",
    ]
