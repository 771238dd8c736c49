"""`auditq verify` and `auditq integrity public-key` from the shell: exit codes and lines."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from service.integrity.keys import load_or_create_private_key
from service.settings import Settings
from tests.support.cli import run_cli
from tests.support.integrity import seal_all, store


@pytest.mark.usefixtures("cli_env")
async def test_verify_exits_0_when_intact_and_1_naming_the_row_when_not(
    settings: Settings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 10)
    await seal_all(pg, key)
    assert await run_cli("integrity", "public-key") == 0
    public = tmp_path / "public.pem"
    public.write_text(capsys.readouterr().out)
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")

    assert await run_cli("verify", "--public-key", str(public)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("verified: 10 rows, 1 checkpoints") and "0 findings" in out[-1]

    async with pg.transaction():
        await pg.execute("SET session_replication_role = replica")
        await pg.execute("UPDATE audit_log SET tenant = 'evil' WHERE id = $1", ids[4])
    assert await run_cli("verify", "--public-key", str(public)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"row {ids[4]} altered (checkpoint 1)"
    assert "1 findings" in out[-1]
    assert await run_cli("verify", "--since", "2000-01-01T00:00:00Z") == 1
    capsys.readouterr()
    assert await run_cli("integrity", "head") == 0  # the log's first checkpoint is not signed yet
    printed = capsys.readouterr()
    assert printed.out == "" and "no checkpoint has been signed yet" in printed.err


@pytest.mark.usefixtures("cli_env")
async def test_verify_usage_and_connection_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    load_or_create_private_key(settings.seal_key_path)
    with pytest.raises(SystemExit) as exited:
        await run_cli("verify", "--since", "yesterday")
    assert exited.value.code == 2
    monkeypatch.setenv("AUDITQ_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert await run_cli("verify") == 2
    assert "cannot connect to PostgreSQL" in capsys.readouterr().err
