"""`auditq tokens create|list|revoke`: the admin API's tokens."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.cli.common import add_command, add_group
from service.errors import ConfigError
from service.ops.admin_actions import RECORD_FAILURES, unwritable
from service.own_events import CLI_SOURCE, cli_actor, requested_by
from service.queue import revocations
from service.settings import Settings
from service.store import db
from service.store import tokens as auth

# The token's change and its audit event are one transaction (schema.sql): no record, no token.
BY_CLI = requested_by(cli_actor(), CLI_SOURCE)


async def cmd_tokens_create(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(settings.require_database())
    try:
        token = await auth.create_token(conn, name=args.name, role=args.role, by=BY_CLI)
    except ValueError as exc:
        print(f"auditq: {exc}", file=sys.stderr)
        return 1
    except RECORD_FAILURES as exc:
        raise unwritable("token.created", exc) from None
    finally:
        await conn.close()
    print(f"token {args.name!r} created (role {args.role}); it is shown once, store it now:")
    print(token, flush=True)
    return 0


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


async def cmd_tokens_list(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(settings.require_database())
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


async def _announce_revocation(settings: Settings, digest: bytes) -> None:
    """Tell Redis too: an API cut off from PostgreSQL consults it. A failure is a warning."""
    try:
        redis = Redis.from_url(
            settings.require_redis(), socket_connect_timeout=2.0, socket_timeout=2.0
        )
    except ConfigError as exc:
        problem = str(exc)
    else:
        try:
            await revocations.announce(redis, digest)
            return
        except (RedisError, OSError) as exc:
            problem = f"Redis does not answer ({type(exc).__name__})"
        finally:
            await redis.aclose()
    print(
        f"auditq: warning: revoked in the database, but not announced in Redis: {problem}. "
        f"An API that cannot reach PostgreSQL may accept it for up to "
        f"{revocations.TRUST_OFFLINE_S:.0f} s",
        file=sys.stderr,
    )


async def cmd_tokens_revoke(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(settings.require_database())
    try:
        revoked = await auth.revoke_token(conn, args.name, by=BY_CLI)
    except RECORD_FAILURES as exc:
        raise unwritable("token.revoked", exc) from None
    finally:
        await conn.close()
    if revoked is None:
        print(f"auditq: no active token named {args.name!r}", file=sys.stderr)
        return 1
    await _announce_revocation(settings, revoked)
    within = revocations.RECHECK_AFTER_S
    print(f"token {args.name!r} revoked: every API refuses it within {within:.0f} s")
    return 0


def _token_name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > 128:
        raise argparse.ArgumentTypeError("a token name is 1 to 128 characters")
    return name


def add_parsers(sub: Any) -> None:
    """Add `tokens create|list|revoke` to the `auditq` subcommands."""
    tokens_help = "Manage admin API tokens: create, list, revoke."
    token_sub = add_group(sub, "tokens", tokens_help)
    create_help = "Make a token; prints it alone on the last line (shown once, stored hashed)."
    create = add_command(token_sub, "create", cmd_tokens_create, create_help)
    create.add_argument("--name", required=True, type=_token_name, help="e.g. ci-export")
    create.add_argument("--role", required=True, choices=auth.ROLES)
    list_help = "List tokens: name, role, created, last used, revoked (never secrets)."
    add_command(token_sub, "list", cmd_tokens_list, list_help)
    revoke_help = "Revoke the active token NAME: every API refuses it within 5 s."
    revoke = add_command(token_sub, "revoke", cmd_tokens_revoke, revoke_help)
    revoke.add_argument("name", type=_token_name)
