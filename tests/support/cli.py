"""The `auditq` command, run from a test."""

from __future__ import annotations

import asyncio

import pytest

from service.cli import main as cli


async def run_cli(*argv: str) -> int:
    """Run `auditq ARGV` as the shell would: its own event loop, in a thread of its own."""
    return await asyncio.to_thread(cli.main, list(argv))


async def cli_output(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `auditq ARGV` in this process (cli_env's environment); its status and what it
    printed, stdout then stderr. A start of the command's own process (about a second of CPU
    on a loaded machine) checks nothing more: tests/cli's run the real executable."""
    capfd.readouterr()  # what the test printed before is not the command's
    status = await run_cli(*argv)
    out, err = capfd.readouterr()
    return status, out + err
