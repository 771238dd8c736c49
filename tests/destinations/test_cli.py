"""`auditq destinations …`: the commands an admin runs, their one-line errors, no secret shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.destinations.receivers import Receiver
from tests.support.cli import run_cli

SECRET = "cli-secret-0b7e"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


@pytest.mark.usefixtures("cli_env")
async def test_add_list_test_pause_resume_remove(
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pg: asyncpg.Connection,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    url = receiver.url("/hook")
    add = ("destinations", "add", "siem", "--type", "webhook", "--url", url)
    assert await run_cli(*add, "--secret-file", str(secret_file), "--allow-private") == 0
    assert await run_cli(*add, "--allow-private") == 1  # the name is taken
    assert await run_cli("destinations", "list") == 0
    assert await run_cli("destinations", "test", "siem") == 0
    assert await run_cli("destinations", "pause", "siem") == 0
    paused = capsys.readouterr()
    assert "siem" in paused.out and "active" in paused.out and '"received": 1' in paused.out
    assert await run_cli("destinations", "list") == 0
    assert "paused" in capsys.readouterr().out
    assert await run_cli("destinations", "resume", "siem") == 0
    assert await run_cli("destinations", "remove", "siem") == 0
    assert await run_cli("destinations", "remove", "siem") == 1
    out = capsys.readouterr()
    assert "no destination is named 'siem'" in out.err
    assert SECRET not in out.out + out.err + paused.out + paused.err
    assert receiver.bad_signatures == 0 and len(receiver.items) == 1
    assert await pg.fetchval("SELECT count(*) FROM destination") == 0


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--type", "webhook", "--url", "http://127.0.0.1:1/x"], "--allow-private"),
        (["--type", "webhook", "--url", "http://169.254.169.254/"], "metadata"),
        (["--type", "syslog", "--url", "https://example.com/"], "tcp://"),
        (["--type", "webhook", "--url", "https://example.com/", "--format", "cef"], "cef"),
        (
            ["--type", "webhook", "--url", "https://example.com/", "--filter", "severity=x"],
            "filter",
        ),
        (
            ["--type", "webhook", "--url", "https://example.com/", "--secret-file", "/nonexistent"],
            "secret file",
        ),
        (["--type", "webhook", "--url", "https://example.com/", "--since", "soon"], "RFC 3339"),
    ],
)
async def test_a_bad_destination_is_one_line_and_a_nonzero_exit(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], pg: asyncpg.Connection
) -> None:
    try:
        code = await run_cli("destinations", "add", "bad", *args)
    except SystemExit as exc:  # argparse's own refusal: usage, then the one line
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code != 0 and says in err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    assert await pg.fetchval("SELECT count(*) FROM destination") == 0
