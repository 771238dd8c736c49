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
from service.own_events import requested_by
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
    from workers.runner import build_worker, report_redis_outages, run_until, worker_state

    assert settings.worker_url is not None  # required by the caller
    await _refuse_privileged_role(settings.worker_url, settings, who="worker")
    stop = asyncio.Event()
    worker = build_worker(settings, audit_lifecycle=True)
    report_redis_outages(settings.redact_extra_keys)  # a stop without Redis: no traceback
    task = asyncio.create_task(run_until(worker, stop))
    try:
        # Up (and its start-up lines logged) before anyone is told it runs; a worker that
        # failed to start raises here.
        started = asyncio.create_task(worker_state(worker).started.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()
        yield
    finally:
        stop.set()
        await task


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if args.status:
        return await _print_schema_status(settings.require_database())
    done = await db.migrate(
        settings.require_database(),
        months_ahead=settings.partitions_ahead_months,
        subject_key_path=settings.subject_key_path,
        subject_entity_types=settings.subject_entity_types,
    )
    if done.new_store:
        print(f"schema applied: a new store at version {done.version.label}")
    elif done.ran:
        ran = ", ".join(m.label for m in done.ran)
        print(f"schema applied: migrations {ran}; the store is at version {done.version.label}")
    else:
        print(f"schema is current: version {done.version.label}")
    if settings.redis_url:
        await _load_functions(settings)
    else:
        print("no AUDITQ_REDIS_URL: the enqueue function is loaded by the first worker")
    from service.queue.producer_acl import acl_line

    print(
        "Give producers a Redis user that can only enqueue (docs/producers.md): run this once "
        "on your Redis with a password of your own, and hand them "
        "redis://auditq-producer:<password>@<host>:<port>/<db>"
    )
    print(acl_line(settings.queue))
    return 0


async def _print_schema_status(database_url: str) -> int:
    versions = await db.schema_status(database_url)
    if versions is None:
        print("empty database: `auditq migrate` applies schema.sql (every version)")
        return 0
    for v in versions:
        if not v.applied:
            state = "pending"
        elif v.applied_at is None:
            state = "applied (made before versions were recorded)"
        else:
            state = f"applied {v.applied_at.isoformat(sep=' ', timespec='seconds')}"
        print(f"{v.migration.label:<32} {state}")
    pending = sum(not v.applied for v in versions)
    print(f"{pending} pending" if pending else "schema is current")
    return 0


async def _make_producer_user(settings: Settings, producer_url: str) -> None:
    """Make the embedded Valkey's producer user and write its URL to producer.env (0600)."""
    from redis.asyncio import Redis

    from service.connections import parse_redis_url, redis_client
    from service.queue.producer_acl import ensure_producer_user

    target = parse_redis_url(producer_url)
    assert target.password is not None
    redis: Redis = redis_client(parse_redis_url(settings.require_redis()))
    try:
        await ensure_producer_user(redis, settings.queue, target.password)
    finally:
        await redis.aclose()
    write_private(settings.producer_env_file, f"AUDITQ_REDIS_URL={producer_url}")


async def _load_functions(settings: Settings) -> None:
    """Load the enqueue function library into the configured Redis; say which way it went."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from service.connections import parse_redis_url, redis_client
    from service.queue.enqueue import ENQUEUE_FUNCTION, load_functions

    redis: Redis = redis_client(parse_redis_url(settings.require_redis()))
    try:
        loaded = await load_functions(redis, max_job_bytes=settings.max_job_bytes)
    except RedisError as exc:
        raise ConfigError(f"cannot load the enqueue function into Redis: {exc}") from exc
    finally:
        await redis.aclose()
    if loaded:
        print(f"Redis: function {ENQUEUE_FUNCTION} loaded")
    else:
        print("Redis: no functions on this server (before Redis 7): producers use EVAL")


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    _require_seal_key(settings)
    stop = stop_signal()  # from now on: a SIGTERM while the worker starts stops it cleanly
    async with _running_worker(require_urls(settings)):
        await stop.wait()
    return 0


async def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    # HTTP ingest spools what Redis cannot take (AUDITQ_SPOOL_DIR, default <data dir>/spool).
    async with _serving_api(require_urls(settings).with_server_spool()) as address:
        print(f"auditq API on {address}", flush=True)
        await wait_for_signal()
    return 0


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from service.embedded.servers import EmbeddedStack
    from service.store.roles import API_ROLE, OWNER_ROLE, WORKER_ROLE

    stop = stop_signal()  # a Ctrl-C while starting stops the stack once it is up (issue 10)
    stack = None
    own_redis = False
    migrate_url = settings.owner_database_url or settings.database_url
    if not settings.redis_url or not settings.database_url:
        settings.data_dir.chmod(0o700)  # it holds the servers' passwords and the seal key
        stack = EmbeddedStack(settings.data_dir)
        await asyncio.to_thread(stack.start)
        own_postgres = not settings.database_url
        own_redis = not settings.redis_url
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
        await _load_functions(settings)
        if stack is not None and own_redis:
            await _make_producer_user(settings, stack.valkey.producer_url)
        if settings.sealing:  # made before "running" is said: `auditq integrity public-key` works
            load_or_create_private_key(settings.seal_key_path)
        token_path = settings.data_dir / ADMIN_TOKEN_FILE
        kept = token_path.read_text().strip() if token_path.exists() else None
        admin_token = await ensure_dev_admin_token(settings)
        async with _running_worker(settings), _serving_api(settings) as address:
            # Last, after every start-up line, so they stay on the screen.
            if stack is not None and own_redis:
                print(f"for producers: set -a; . {settings.producer_env_file}", flush=True)
            if admin_token != kept:  # shown when made, never again
                print(f"admin token (also kept in {token_path}): {admin_token}", flush=True)
            else:
                print(f"admin token: kept in {token_path}", flush=True)
            print(f"auditq is running: API on {address}", flush=True)
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
    migrate = add_command(
        sub,
        "migrate",
        cmd_migrate,
        "Bring the store to the current schema (schema.sql for a new one, else the numbered"
        " migrations it lacks) and make partitions ahead; idempotent.",
    )
    migrate.add_argument(
        "--status", action="store_true", help="list the schema versions applied and pending"
    )
    add_command(sub, "api", cmd_api, "Serve the admin API.")
    add_command(sub, "worker", cmd_worker, "Run an arq worker that stores queued events.")
