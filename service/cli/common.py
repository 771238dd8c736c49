"""What the commands share: the URLs they need, signals, private files."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from service.settings import Settings

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def require_urls(settings: Settings) -> Settings:
    """The settings, if they name a Redis and a PostgreSQL; else one clear error."""
    settings.require_redis()
    settings.require_database()
    return settings


def stop_signal() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM, from now on (a Ctrl-C while starting included)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    await stop_signal().wait()


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only."""
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.chmod(staging, 0o600)  # the file may have existed with wider rights
    os.replace(staging, path)


def add_command(sub: Any, name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
    """Add the subcommand `name` to `sub`, running `command`."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(command=command)
    return parser


def add_group(sub: Any, name: str, help_text: str) -> Any:
    """Add the group `name` to `sub` (`auditq NAME ACTION`); its actions are added to what
    this returns."""
    group = sub.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")
