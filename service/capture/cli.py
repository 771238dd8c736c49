"""`auditq capture install|uninstall|status|relay`: capture from an application's database."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from service.capture import installer
from service.capture.relay import describe, run_relays
from service.cli.common import add_command, stop_signal
from service.errors import ConfigError
from service.settings import Settings


async def cmd_install(settings: Settings, args: argparse.Namespace) -> int:
    result = await installer.install(
        args.database_url,
        args.table,
        entity=args.entity,
        ignore=args.ignore,
        mask=args.mask,
        extra_keys=settings.redact_extra_keys,
    )
    masked = ", ".join(result.masked) or "none"
    print(f"capturing {result.table} as {result.entity}.created|updated|deleted (masked: {masked})")
    return 0


async def cmd_uninstall(settings: Settings, args: argparse.Namespace) -> int:
    last = await installer.uninstall(
        args.database_url, args.table, discard_pending=args.discard_pending
    )
    schema, table = installer.parse_table(args.table)
    print(f"no longer capturing {schema}.{table}")
    if last:
        print("that was the last captured table: the outbox is removed too")
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    urls = _urls(settings, args)
    now = datetime.now(UTC)
    for url in urls:
        tables = await installer.status(url)
        print(f"{describe(url)}: {len(tables)} captured table(s)")
        for table in tables:
            lag = 0.0 if table.oldest is None else max(0.0, (now - table.oldest).total_seconds())
            masked = ",".join(table.masked) or "-"
            print(
                f"  {table.table}  entity={table.entity}  pending={table.pending}  "
                f"lag_s={lag:.1f}  masked={masked}"
            )
            if not table.current:
                print(
                    f"  ! {table.table}: its columns changed since install; run "
                    "`auditq capture install` for it again (same options)"
                )
    return 0


async def cmd_relay(settings: Settings, args: argparse.Namespace) -> int:
    urls = _urls(settings, args)
    settings.require_redis()
    stop = stop_signal()
    print(f"relaying {len(urls)} outbox(es) into queue {settings.queue}", flush=True)
    relays = await run_relays(settings, urls, stop)
    print(f"stopped: {sum(r.relayed for r in relays)} events relayed", flush=True)
    return 0


def _urls(settings: Settings, args: argparse.Namespace) -> tuple[str, ...]:
    urls = tuple(args.database_url or ()) or settings.capture_database_urls
    if not urls:
        raise ConfigError(
            "no application database: pass --database-url or set AUDITQ_CAPTURE_DATABASE_URLS"
        )
    return urls


def add_parsers(sub: Any) -> None:
    """Add `capture install|uninstall|status|relay` to the `auditq` subcommands."""
    capture_help = "Capture row changes in an application's PostgreSQL (docs/capture.md)."
    capture = sub.add_parser("capture", help=capture_help, description=capture_help)
    actions = capture.add_subparsers(dest="capture_command", required=True, metavar="ACTION")

    install_help = (
        "Capture a table's inserts, updates and deletes: statement-level triggers and an "
        "outbox in its database. Again is harmless (and applies new options)."
    )
    install = add_command(actions, "install", cmd_install, install_help)
    _database_url(install)
    _table(install)
    install.add_argument(
        "--entity", help="the events' entity type, <entity>.created etc. (default: the table name)"
    )
    install.add_argument(
        "--ignore",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help="fields never in a diff (besides created_at, updated_at and the like)",
    )
    install.add_argument(
        "--mask",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help="columns whose values are never stored, only that they changed "
        "(besides those the redaction rules name, e.g. password, api_token)",
    )

    uninstall_help = (
        "Stop capturing a table: remove what install made for it (the outbox with the last one)."
    )
    uninstall = add_command(actions, "uninstall", cmd_uninstall, uninstall_help)
    _database_url(uninstall)
    _table(uninstall)
    uninstall.add_argument(
        "--discard-pending",
        action="store_true",
        help="also drop the table's changes not relayed yet (refused otherwise)",
    )

    status_help = "List the captured tables and their outbox lag."
    status = add_command(actions, "status", cmd_status, status_help)
    _database_url(status, many=True)

    relay_help = (
        "Move the outboxes into the queue until Ctrl-C (default: AUDITQ_CAPTURE_DATABASE_URLS)."
    )
    relay = add_command(actions, "relay", cmd_relay, relay_help)
    _database_url(relay, many=True)


def _database_url(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        parser.add_argument(
            "--database-url",
            action="append",
            metavar="APP_URL",
            help="an application database (repeatable; default AUDITQ_CAPTURE_DATABASE_URLS)",
        )
    else:
        parser.add_argument(
            "--database-url", required=True, metavar="APP_URL", help="the application database"
        )


def _table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, metavar="SCHEMA.TABLE")
