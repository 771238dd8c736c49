"""The `auditq` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from service import auth, cli_subjects, cli_verify, db, logs, task_commands
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
    # HTTP ingest spools what Redis cannot take (AUDITQ_SPOOL_DIR, default <data dir>/spool).
    async with _serving_api(_require_urls(settings).with_server_spool()) as address:
        print(f"auditq API on {address}", flush=True)
        await _wait_for_signal()
    return 0


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from service.embedded import API_ROLE, OWNER_ROLE, WORKER_ROLE, EmbeddedStack

    stack = None
    migrate_url = settings.database_url
    if not settings.redis_url or not settings.database_url:
        settings.data_dir.chmod(0o700)  # it holds the servers' passwords and the seal key
        stack = EmbeddedStack(settings.data_dir)
        await asyncio.to_thread(stack.start)
        own_postgres = not settings.database_url
        settings = dataclasses.replace(
            settings,
            redis_url=settings.redis_url or stack.valkey.url,
            # The runtime connects as roles that cannot rewrite stored rows (docs/integrity.md);
            # only this process, to migrate, uses the schema's owner.
            database_url=settings.database_url or stack.postgres.role_url(API_ROLE),
            worker_database_url=settings.worker_database_url
            or (stack.postgres.role_url(WORKER_ROLE) if own_postgres else None),
        )
        migrate_url = stack.postgres.role_url(OWNER_ROLE) if own_postgres else migrate_url
        lines = [
            f"AUDITQ_REDIS_URL={settings.redis_url}",
            f"AUDITQ_DATABASE_URL={settings.database_url}",
        ]
        if settings.worker_database_url:
            lines.append(f"AUDITQ_WORKER_DATABASE_URL={settings.worker_database_url}")
        _write_private(settings.env_file, "\n".join(lines))
    settings = settings.with_server_spool()  # the API's producer spools what Redis cannot take
    try:
        assert migrate_url
        await db.migrate(migrate_url, months_ahead=settings.partitions_ahead_months)
        token_path = settings.data_dir / ADMIN_TOKEN_FILE
        kept = token_path.read_text().strip() if token_path.exists() else None
        admin_token = await ensure_dev_admin_token(settings)
        if admin_token != kept:  # shown when made, never again
            print(f"admin token (also kept in {token_path}): {admin_token}", flush=True)
        else:
            print(f"admin token: kept in {token_path}", flush=True)
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


DEV_ADMIN_TOKEN_NAME = "dev-admin"
ADMIN_TOKEN_FILE = "admin-token"  # under the data dir


def _require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "no PostgreSQL to talk to: set AUDITQ_DATABASE_URL, or start `auditq run` "
            f"(its URLs are then read from {settings.env_file})"
        )
    return settings.database_url


async def _audit_token_change(settings: Settings, action: str, name: str, role: str | None) -> None:
    """Record a token change as an audit event, best effort: the command stands regardless."""
    from service.client import AuditClient
    from service.events import Actor, AuditEvent, Entity

    if not settings.redis_url:
        logger.warning("no Redis URL: %s of token %r is not audited", action, name)
        return
    event = AuditEvent(
        action=action,
        severity="notice",
        actor=Actor(id="cli", type="system"),
        entity=Entity(type="api_token", id=name),
        metadata={"name": name, "role": role} if role else {"name": name},
        source="auditq-cli",
    )
    try:
        async with AuditClient.from_settings(settings) as client:
            await client.capture(event)  # never raises; a failure is logged by the client
    except Exception as exc:
        logger.warning("%s of token %r is not audited: %s", action, name, exc)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only."""
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.chmod(staging, 0o600)  # the file may have existed with wider rights
    os.replace(staging, path)


async def ensure_dev_admin_token(settings: Settings) -> str:
    """Return the admin token of <data_dir>/admin-token, made anew when it no longer works."""
    from service.http import ApiError

    path = settings.data_dir / ADMIN_TOKEN_FILE
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    conn = await db.connect(_require_database(settings))
    try:
        if saved:
            with contextlib.suppress(ApiError):
                if (await auth.authenticate(conn, f"Bearer {saved}")).role == "admin":
                    return saved
        # The file is gone or its token revoked: a token of that name, if any, is unknown now.
        async with conn.transaction():
            await auth.revoke_token(conn, DEV_ADMIN_TOKEN_NAME)
            token = await auth.create_token(conn, name=DEV_ADMIN_TOKEN_NAME, role="admin")
    finally:
        await conn.close()
    _write_private(path, token)
    await _audit_token_change(settings, "token.created", DEV_ADMIN_TOKEN_NAME, "admin")
    return token


async def cmd_tokens_create(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(_require_database(settings))
    try:
        token = await auth.create_token(conn, name=args.name, role=args.role)
    except ValueError as exc:
        print(f"auditq: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    await _audit_token_change(settings, "token.created", args.name, args.role)
    print(f"token {args.name!r} created (role {args.role}); it is shown once, store it now:")
    print(token, flush=True)
    return 0


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


async def cmd_tokens_list(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(_require_database(settings))
    try:
        rows = await auth.list_tokens(conn)
    finally:
        await conn.close()
    if not rows:
        print("no tokens; make one with `auditq tokens create --name NAME --role ROLE`")
        return 0
    table = [("NAME", "ROLE", "CREATED", "LAST USED", "REVOKED")]
    for row in rows:
        when = (_when(row["created_at"]), _when(row["last_used_at"]), _when(row["revoked_at"]))
        table.append((row["name"], row["role"], *when))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


async def cmd_tokens_revoke(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(_require_database(settings))
    try:
        revoked = await auth.revoke_token(conn, args.name)
    finally:
        await conn.close()
    if not revoked:
        print(f"auditq: no active token named {args.name!r}", file=sys.stderr)
        return 1
    await _audit_token_change(settings, "token.revoked", args.name, None)
    print(f"token {args.name!r} revoked: it stops working at once")
    return 0


def _token_name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > 128:
        raise argparse.ArgumentTypeError("a token name is 1 to 128 characters")
    return name


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
    tokens_help = "Manage admin API tokens: create, list, revoke."
    tokens = sub.add_parser("tokens", help=tokens_help, description=tokens_help)
    token_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create_help = "Make a token; prints it alone on the last line (shown once, stored hashed)."
    create = token_sub.add_parser("create", help=create_help, description=create_help)
    create.set_defaults(command=cmd_tokens_create)
    create.add_argument("--name", required=True, type=_token_name, help="e.g. ci-export")
    create.add_argument("--role", required=True, choices=auth.ROLES)
    list_help = "List tokens: name, role, created, last used, revoked (never secrets)."
    token_sub.add_parser("list", help=list_help, description=list_help).set_defaults(
        command=cmd_tokens_list
    )
    revoke_help = "Revoke the active token NAME: it stops working at once."
    revoke = token_sub.add_parser("revoke", help=revoke_help, description=revoke_help)
    revoke.set_defaults(command=cmd_tokens_revoke)
    revoke.add_argument("name", type=_token_name)
    task_commands.add_parsers(sub)  # stats, tasks list|show|retry|cleanup
    cli_verify.add_parsers(sub)  # verify, integrity public-key
    cli_subjects.add_parsers(sub)  # anonymise (erasure, §9)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one auditq command; a user mistake is one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        # A fresh run owns its stack: URLs published by an earlier run are not reused.
        settings = Settings.from_env(published=args.command is not cmd_run)
        logs.configure(log_format=settings.log_format, level=settings.log_level)
        if args.command is cmd_run:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        status: int = asyncio.run(args.command(settings, args))
        return status
    except (AuditqError, msgspec.DecodeError) as exc:
        print(f"auditq: {exc}", file=sys.stderr)
        return 2
    except RecursionError:
        print("auditq: the JSON given is nested too deeply", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"auditq: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
