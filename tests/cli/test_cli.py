"""The `auditq` command line: emit, help, and user mistakes as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from tests.support.cli import run_cli
from tests.support.queue import queued_events

COMMANDS = [
    "run",
    "migrate",
    "api",
    "worker",
    "emit",
    "stats",
    "tasks",
    "tokens",
    "verify",
    "integrity",
    "anonymise",
]


@pytest.mark.unit
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: auditq" in capsys.readouterr().out


async def test_emit_sends_one_event_and_prints_its_id(
    cli_env: None, settings: Settings, redis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    status = await run_cli(
        "emit",
        "config.updated",
        "--actor",
        "u-9",
        "--entity",
        "project:42",
        "--metadata",
        json.dumps({"password": "planted-pw", "plan": "pro"}),
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    events = await queued_events(redis, settings.queue)
    assert [e["id"] for e in events] == [out[-1]]
    assert events[0]["entity"] == {"type": "project", "id": "42"}
    assert events[0]["metadata"] == {"password": "[REDACTED]", "plan": "pro"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["emit", "Not An Action"], "action"),
        (["emit", "a.b", "--entity", "no-colon"], "TYPE:ID"),
        (["emit", "a.b", "--metadata", "{not json"], "JSON"),
        (["emit", "a.b", "--metadata", '{"a":' * 100_000 + "1" + "}" * 100_000], "JSON"),
    ],
)
async def test_a_user_mistake_is_one_line_and_exit_2(
    cli_env: None, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("auditq: ") and says in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.unit
async def test_no_servers_to_talk_to_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AUDITQ_DATABASE_URL", "AUDITQ_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDITQ_DATA_DIR", str(tmp_path))
    assert await run_cli("migrate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AUDITQ_DATABASE_URL" in err[0]


@pytest.mark.unit
async def test_a_bad_setting_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDITQ_HTTP_PORT", "eighty")
    assert await run_cli("migrate") == 2
    assert (
        capsys.readouterr().err.strip()
        == "auditq: AUDITQ_HTTP_PORT must be an integer, not 'eighty'"
    )
