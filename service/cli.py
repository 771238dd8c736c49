"""The `auditq` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgspec
from aiohttp import web

from service import db, logs
from service.errors import AuditqError, ConfigError
from service.settings import Settings

logger = logging.getLogger("auditq.cli")


def _require_urls(settings: Settings) -> Settings:
    if not settings.redis_url or not settings.database_url:
        raise ConfigError(
            "no Redis/PostgreSQL to talk to: set AUDITQ_REDIS_URL and AUDITQ_DATABASE_URL, "
            "or start `auditq run` (its URLs are then read from "
            f"{settings.env_file})"
        )
    return settings


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@contextlib.asynccontextmanager
async def _serving_api(settings: Settings) -> AsyncIterator[str]:
    from service.app import create_app

    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    try:
        yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _running_worker(settings: Settings) -> AsyncIterator[None]:
    from workers.worker import build_worker, run_until

    stop = asyncio.Event()
    task = asyncio.create_task(run_until(build_worker(settings), stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    database_url = _require_urls(settings).database_url
    assert database_url
    await db.migrate(database_url, months_ahead=settings.partitions_ahead_months)
    print("schema applied")
    return 0


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    async with _running_worker(_require_urls(settings)):
        await _wait_for_signal()
    return 0


async def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    async with _serving_api(_require_urls(settings)) as address:
        print(f"auditq API on {address}", flush=True)
        await _wait_for_signal()
    return 0


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from service.embedded import EmbeddedStack

    stack = None
    if not settings.redis_url or not settings.database_url:
        stack = EmbeddedStack(settings.data_dir)
        await asyncio.to_thread(stack.start)
        settings = dataclasses.replace(
            settings,
            redis_url=settings.redis_url or stack.valkey.url,
            database_url=settings.database_url or stack.postgres.url,
        )
        settings.env_file.write_text(
            f"AUDITQ_REDIS_URL={settings.redis_url}\nAUDITQ_DATABASE_URL={settings.database_url}\n"
        )
    try:
        assert settings.database_url
        await db.migrate(settings.database_url, months_ahead=settings.partitions_ahead_months)
        async with _running_worker(settings), _serving_api(settings) as address:
            print(f"auditq is running: API on {address}", flush=True)
            if stack is not None:
                print(f"URLs for producers: set -a; . {settings.env_file}", flush=True)
            demo = None
            if args.demo:
                from service.demo import feed

                demo = asyncio.create_task(feed(settings))
            await _wait_for_signal()
            print("stopping: finishing the jobs in hand…", flush=True)
            if demo is not None:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo
    finally:
        if stack is not None:
            settings.env_file.unlink(missing_ok=True)
            await asyncio.to_thread(stack.stop)
    print("stopped", flush=True)
    return 0


async def cmd_emit(settings: Settings, args: argparse.Namespace) -> int:
    from service.client import AuditClient
    from service.events import AuditEvent

    data: dict[str, Any] = msgspec.json.decode(args.json) if args.json else {}
    if not isinstance(data, dict):
        raise ConfigError("--json must be one JSON object")
    if args.action:
        data["action"] = args.action
    for name in ("severity", "outcome", "tenant", "source"):
        if getattr(args, name):
            data[name] = getattr(args, name)
    if args.actor:
        data["actor"] = {"id": args.actor, "type": "user"}
    if args.entity:
        entity_type, _, entity_id = args.entity.partition(":")
        if not entity_id:
            raise ConfigError("--entity must be TYPE:ID, e.g. project:42")
        data["entity"] = {"type": entity_type, "id": entity_id}
    if args.metadata:
        data["metadata"] = msgspec.json.decode(args.metadata)
    try:
        event = msgspec.convert(data, AuditEvent)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid event: {exc}") from None
    client = AuditClient.from_settings(_require_urls(settings))
    try:
        event_id = await client.capture(event)
    finally:
        await client.aclose()
    if event_id is None:
        print("auditq: the event could not be queued (see the log line above)", file=sys.stderr)
        return 1
    print(event_id)
    return 0


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditq", description="Audit events into PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(command=command)
        return p

    run = add("run", cmd_run, "Run the whole pipeline (embedded servers unless URLs are set).")
    run.add_argument("--demo", action="store_true", help="also feed realistic demo traffic")
    add("migrate", cmd_migrate, "Apply schema.sql (idempotent) and make partitions ahead.")
    add("api", cmd_api, "Serve the admin API.")
    add("worker", cmd_worker, "Run an arq worker that stores queued events.")
    emit = add("emit", cmd_emit, "Send one audit event from the shell; prints its id.")
    emit.add_argument("action", nargs="?", help="e.g. config.updated")
    emit.add_argument("--actor", help="actor id (a user)")
    emit.add_argument("--entity", help="TYPE:ID, e.g. project:42")
    emit.add_argument("--severity", choices=["info", "notice", "warning", "critical"])
    emit.add_argument("--outcome", choices=["success", "failure"])
    emit.add_argument("--tenant")
    emit.add_argument("--source")
    emit.add_argument("--metadata", help="a JSON object")
    emit.add_argument("--json", help="the whole event as JSON (flags override its fields)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one auditq command; a user mistake is one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(log_format=settings.log_format, level=settings.log_level)
        if args.command is cmd_run:
            # A fresh run owns its stack: URLs published by an earlier run are not reused.
            settings = dataclasses.replace(
                Settings.from_env(published=False), data_dir=settings.data_dir
            )
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        status: int = asyncio.run(args.command(settings, args))
        return status
    except (AuditqError, msgspec.DecodeError) as exc:
        print(f"auditq: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"auditq: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
