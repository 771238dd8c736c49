"""The `auditq` command, run from a test."""

from __future__ import annotations

import asyncio

from service.cli import main as cli


async def run_cli(*argv: str) -> int:
    """Run `auditq ARGV` as the shell would: its own event loop, in a thread of its own."""
    return await asyncio.to_thread(cli.main, list(argv))
