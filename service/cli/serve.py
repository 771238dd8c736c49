"""Serving commands: run (the whole stack), migrate, api, worker; the dev admin token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from service.cli.common import (
    add_command,
    require_urls,
    stop_signal,
    wait_for_signal,
    write_private,
)
from service.errors import ConfigError
from service.events import Actor
from service.integrity.keys import load_or_create_private_key
from service.ops.admin_actions import requested_by
from service.settings import Settings
from service.store import db
from service.store import tokens as auth
from service.store.roles import check_runtime_role

logger = logging.getLogger(__name__)


async def _refuse_privileged_role(url: str, settings: Settings, *, who: str) -> None:
    """Stop here (one clear line) when `url`'s role could rewrite history."""
    if settings.allow_privileged_role:
        logger.warning("the %s does not check its role (AUDITQ_ALLOW_PRIVILEGED_ROLE=1)", who)
        return
    conn = await db.connect(url)
    try:
        problem = await check_runtime_role(conn, who=who)
    finally:
        await conn.close()
    if problem is not None:
        raise ConfigError(problem)


def _require_seal_key(settings: Settings) -> None:
    """A worker outside `auditq run` signs with the deployment's one key, never one it mints."""
    if not settings.sealing:
        return
    if settings.seal_key_file is None:
        raise ConfigError(
            "set AUDITQ_SEAL_KEY_FILE to the deployment's seal key (every worker signs with the "
            "same one; a key made here would make its checkpoints unverifiable)"
        )
    if not settings.seal_key_file.exists():
        raise ConfigError(f"no seal key at {settings.seal_key_file} (AUDITQ_SEAL_KEY_FILE)")


@contextlib.asynccontextmanager
async def _serving_api(settings: Settings) -> AsyncIterator[str]:
    from service.api.app import create_app

    await _refuse_privileged_role(settings.require_database(), settings, who="API")

    runner = web.AppRunner(
        create_app(settings, audit_lifecycle=True), handle_signals=False, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    try:
        yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _running_worker(settings: Settings) -> AsyncIterator[None]:
    from workers.runner import build_worker, run_until

    assert settings.worker_url is not None  # required by the caller
    await _refuse_privileged_role(settings.worker_url, settings, who="worker")
    stop = asyncio.Event()
    task = asyncio.create_task(run_until(build_worker(settings, audit_lifecycle=True), stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    await db.migrate(
        settings.require_database(),
        months_ahead=settings.partitions_ahead_months,
        subject_key_path=settings.subject_key_path,
        subject_entity_types=settings.subject_entity_types,
    )
    print("schema applied")
    return 0


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    _require_seal_key(settings)
    async with _running_worker(require_urls(settings)):
        await wait_for_signal()
    return 0


async def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    # HTTP ingest spools what Redis cannot take (AUDITQ_SPOOL_DIR, default <data dir>/spool).
    async with _serving_api(require_urls(settings).with_server_spool()) as address:
        print(f"auditq API on {address}", flush=True)
        await wait_for_signal()
    return 0


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from service.cli.embedded import API_ROLE, OWNER_ROLE, WORKER_ROLE, EmbeddedStack

    stop = stop_signal()  # a Ctrl-C while starting stops the stack once it is up (issue 10)
    stack = None
    migrate_url = settings.owner_database_url or settings.database_url
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
        write_private(settings.env_file, "\n".join(lines))
    settings = settings.with_server_spool()  # the API's producer spools what Redis cannot take
    try:
        if migrate_url is None:
            raise ConfigError("no PostgreSQL to migrate: set AUDITQ_DATABASE_URL")
        await db.migrate(
            migrate_url,
            months_ahead=settings.partitions_ahead_months,
            subject_key_path=settings.subject_key_path,
            subject_entity_types=settings.subject_entity_types,
        )
        if settings.sealing:  # made before "running" is said: `auditq integrity public-key` works
            load_or_create_private_key(settings.seal_key_path)
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
                from service.cli.demo import feed

                demo = asyncio.create_task(feed(settings))
            await stop.wait()
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


DEV_ADMIN_TOKEN_NAME = "dev-admin"
RUN_ACTOR = Actor(id="auditq-run", type="system")  # who makes the dev admin token
ADMIN_TOKEN_FILE = "admin-token"  # under the data dir


async def ensure_dev_admin_token(settings: Settings) -> str:
    """Return the admin token of <data_dir>/admin-token, made anew when it no longer works."""
    path = settings.data_dir / ADMIN_TOKEN_FILE
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    conn = await db.connect(settings.require_database())
    try:
        if saved:
            row = await auth.find_active_token(conn, auth.hash_token(saved))
            if row is not None and row["role"] == "admin":
                return saved
        # The file is gone or its token revoked: a token of that name, if any, is unknown now.
        by = requested_by(RUN_ACTOR, "auditq-run")  # each change stored with its event
        async with conn.transaction():
            await auth.revoke_token(conn, DEV_ADMIN_TOKEN_NAME, by=by)
            token = await auth.create_token(conn, name=DEV_ADMIN_TOKEN_NAME, role="admin", by=by)
    finally:
        await conn.close()
    write_private(path, token)
    return token


def add_parsers(sub: Any) -> None:
    """Add `run`, `migrate`, `api` and `worker` to the `auditq` subcommands."""
    run_help = "Run the whole pipeline (embedded servers unless URLs are set)."
    run = add_command(sub, "run", cmd_run, run_help)
    run.add_argument("--demo", action="store_true", help="also feed realistic demo traffic")
    add_command(
        sub, "migrate", cmd_migrate, "Apply schema.sql (idempotent) and make partitions ahead."
    )
    add_command(sub, "api", cmd_api, "Serve the admin API.")
    add_command(sub, "worker", cmd_worker, "Run an arq worker that stores queued events.")
