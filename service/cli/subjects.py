"""`auditq anonymise SUBJECT_ID`: erase one data subject and wait for the counts (§9).

On main's layout this is service/cli/subjects.py; the procedure is service/ops/subjects.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions

from service.cli.common import add_command
from service.errors import AuditqError, ConfigError
from service.ops import subjects
from service.ops.admin_actions import unwritable
from service.own_events import CLI_SOURCE, cli_actor, requested_by
from service.settings import Settings
from service.store import db

CONNECT_TIMEOUT = 2.0  # seconds


class Unavailable(AuditqError):
    """PostgreSQL or Redis did not answer."""


async def cmd_anonymise(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url or not settings.redis_url:
        raise ConfigError(
            "no servers to talk to: set AUDITQ_DATABASE_URL and AUDITQ_REDIS_URL, or start "
            f"`auditq run` (its URLs are then read from {settings.env_file})"
        )
    try:
        subject_id = subjects.check_subject_id(args.subject_id)
        reason = subjects.check_reason(args.reason)
    except subjects.InvalidSubject as exc:
        raise ConfigError(str(exc)) from None
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        pool = await db.create_pool(settings.database_url, size=2)
    except (OSError, asyncpg.PostgresError) as exc:
        await client.aclose()
        raise Unavailable(f"PostgreSQL is not answering ({type(exc).__name__})") from None
    # The command prints the counts itself: the procedure's INFO line (for the API's log)
    # would only come between them.
    procedure_log = logging.getLogger(subjects.__name__)
    level = procedure_log.level
    procedure_log.setLevel(logging.WARNING)
    try:
        by = requested_by(cli_actor(), CLI_SOURCE)
        outcome = await subjects.anonymise(pool, client, settings, subject_id, reason=reason, by=by)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise Unavailable(f"Redis is not answering ({type(exc).__name__})") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The store records every step itself: what it could not write was not done.
        raise unwritable("subject.anonymised", exc) from None
    finally:
        procedure_log.setLevel(level)
        await pool.close()
        await client.aclose()
    assert outcome is not None  # waited for any other run; the store recorded it
    print(f"pseudonym: {outcome.pseudonym}")
    print(f"rows: {outcome.rows}")
    print(f"dead letters: {outcome.dead_letters}")
    print(f"redis documents: {outcome.redis_documents}")
    if outcome.actions:  # what `auditq verify` names for each changed row
        print(f"store actions: {outcome.actions[0]}-{outcome.actions[-1]}")
    if not (outcome.rows or outcome.dead_letters or outcome.redis_documents):
        # A mistyped id erases nothing: say so, not only with zeros.
        print(
            f"warning: nothing held {subject_id!r} (no row, dead letter or queued task): "
            "check the id; its later events will be stored cleared all the same",
            file=sys.stderr,
        )
    return 0


def add_parsers(sub: Any) -> None:
    """Add `anonymise` to the `auditq` subcommands."""
    text = (
        "Pseudonymise one data subject everywhere auditq keeps data (rows, Redis, dead "
        "letters); waits and prints the pseudonym and the counts."
    )
    parser = add_command(sub, "anonymise", cmd_anonymise, text)
    parser.add_argument("subject_id", help="the actor id (or user entity id) to erase")
    parser.add_argument("--reason", help="kept in the subject.anonymised audit event")
