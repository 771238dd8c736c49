"""`auditq policy show|set`: the store's retention policy (contract §6)."""

from __future__ import annotations

import argparse
from datetime import UTC
from typing import Any

import asyncpg

from service.errors import AuditqError, ConfigError
from service.settings import Settings
from service.store import db
from service.store import policy as store_policy


class Unavailable(AuditqError):
    """PostgreSQL did not answer."""


_UNSET: Any = object()  # --retention-days not given (None means 'none')


def _retention(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of days or 'none', not {text!r}") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"at least 1 day, not {days}")
    return days


def _types(text: str) -> list[str]:
    types = sorted({t.strip() for t in text.split(",") if t.strip()})
    if not types or any(len(t) > 128 for t in types):
        raise argparse.ArgumentTypeError("entity types, comma-separated, e.g. user,customer")
    return types


def _print(policy: store_policy.Policy, types: list[str] | None) -> None:
    days = policy.retention_days
    print(f"retention: {'none (rows are kept for ever)' if days is None else f'{days} days'}")
    pinned = ", ".join(types) if types else "not pinned (each API's AUDITQ_SUBJECT_ENTITY_TYPES)"
    print(f"subject entity types: {pinned}")
    when = policy.set_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if policy.set_at else "-"
    print(f"set at: {when}")
    print(f"set by: {policy.set_by or '-'}")


async def _connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await db.connect(settings.require_database())
    except (OSError, asyncpg.PostgresError) as exc:
        raise Unavailable(f"PostgreSQL is not answering ({type(exc).__name__})") from None


async def cmd_policy_show(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    try:
        _print(await store_policy.show(conn), await store_policy.subject_types(conn))
    finally:
        await conn.close()
    return 0


async def cmd_policy_set(settings: Settings, args: argparse.Namespace) -> int:
    conn = await _connect(settings)
    if args.retention_days is _UNSET and args.subject_entity_types is None:
        await conn.close()
        raise ConfigError("say what to set: --retention-days N|none, --subject-entity-types T,…")
    try:
        async with conn.transaction():  # both or neither (each change is a store action)
            if args.subject_entity_types is not None:
                await store_policy.set_subject_types(conn, args.subject_entity_types)
            if args.retention_days is not _UNSET:
                await store_policy.set_retention(conn, args.retention_days)
        policy = await store_policy.show(conn)
        types = await store_policy.subject_types(conn)
    except store_policy.NotOwner:
        raise ConfigError(
            "only the schema's owner sets the policy: run this with AUDITQ_DATABASE_URL of the "
            "role that ran `auditq migrate`"
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(f"the policy was not changed ({type(exc).__name__})") from None
    finally:
        await conn.close()
    _print(policy, types)
    return 0


def add_parsers(sub: Any) -> None:
    """Add `policy show|set` to the `auditq` subcommands."""
    text = "The store's policy: how long rows are kept (only the schema owner sets it)."
    parser = sub.add_parser("policy", help=text, description=text)
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the policy", description="Print the policy.")
    show.set_defaults(command=cmd_policy_show)
    text = (
        "Set the retention, with the schema owner's AUDITQ_DATABASE_URL; the change is a "
        "sealed store action. Rows older than it are removed by the workers' maintenance."
    )
    setter = actions.add_parser("set", help=text, description=text)
    setter.set_defaults(command=cmd_policy_set)
    setter.add_argument(
        "--retention-days",
        type=_retention,
        default=_UNSET,
        metavar="N|none",
        help="keep rows N days (at least 1), or 'none' to keep them for ever",
    )
    setter.add_argument(
        "--subject-entity-types",
        type=_types,
        metavar="T,…",
        help="pin the entity types whose id is a data subject's (erasure may not go wider)",
    )
