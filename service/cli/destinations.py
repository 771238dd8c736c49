"""`auditq destinations list|add|remove|pause|resume|test|backfill` (contract §11)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from service.api.destinations import NewDestination, Options, checked, info
from service.cli.common import add_command, add_group
from service.errors import ConfigError
from service.ops.admin_actions import RECORD_FAILURES, audit_cli_action, unwritable
from service.ops.destinations import admin
from service.ops.destinations.probe import send_test
from service.own_events import CLI_SOURCE, cli_actor, requested_by
from service.settings import Settings
from service.store import db
from service.store import destinations as store
from service.store.db import Conn

BY_CLI = requested_by(cli_actor(), CLI_SOURCE)  # who asks: the local user, at the shell

NAME_HELP = "letters, digits, _ . - (up to 64)"
# The flags of `destinations add` that are fields of the API's NewDestination as they are.
_ADD_FIELDS = ("name", "type", "url", "format", "filter", "since", "allow_private")


def _time(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {value}Z")
    return when


def _read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"the secret file {path} is empty")
    return secret


def _options(args: argparse.Namespace) -> Options:
    ca_pem = None
    if args.ca_file:
        try:
            ca_pem = Path(args.ca_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.ca_file}: {exc.strerror or exc}") from None
    classes = None
    if args.ocsf_class:
        classes = {}
        for rule in args.ocsf_class:
            prefix, sep, name = rule.partition("=")
            if not sep or not prefix or not name:
                raise ConfigError(f"--ocsf-class takes PREFIX=CLASS, not {rule!r}")
            classes[prefix] = name
    return Options(
        ca_pem=ca_pem,
        host=args.host,
        source=args.source,
        sourcetype=args.sourcetype,
        index=args.index,
        ocsf_classes=classes,
    )


async def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in _ADD_FIELDS}
    wanted = NewDestination(**given, options=_options(args))
    new = checked(wanted, created_by="cli")
    new["secret"] = _read_secret(args.secret_file)
    async with _connection(settings) as conn:
        try:  # stored with its destination.created event, or not at all
            added = await admin.add(conn, BY_CLI, **new)
        except RECORD_FAILURES as exc:
            raise unwritable("destination.created", exc) from None
    if not added:
        print(f"auditq: a destination is named {args.name!r}", file=sys.stderr)
        return 1
    start = f"rows stored since {args.since.isoformat()}" if args.since else "rows stored from now"
    print(f"destination {args.name!r} added ({args.type}, {args.format}): it gets {start}")
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


async def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _connection(settings) as conn:
        items = [await info(conn, d) for d in await store.list_destinations(conn)]
    if args.json:
        print(msgspec.json.encode(items).decode())
        return 0
    if not items:
        print("no destinations; add one with `auditq destinations add NAME --type … --url …`")
        return 0
    table = [("NAME", "TYPE", "FORMAT", "STATE", "LAG", "LAG S", "DELIVERED", "FAILED", "LAST")]
    for i in items:
        table.append(
            (
                i.name,
                i.type,
                i.format,
                i.state,
                str(i.lag_events),
                f"{i.lag_s:.1f}",
                str(i.delivered_total),
                str(i.failed_attempts_total),
                _cell(i.last_delivered_at),
            )
        )
    widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    for i in items:
        if i.last_error and i.state == "failing":
            print(f"{i.name}: last error: {i.last_error}")
    return 0


@asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[Conn]:
    conn = await db.connect(settings.require_database())
    try:
        yield conn
    finally:
        await conn.close()


def _missing(name: str) -> int:
    print(f"auditq: no destination is named {name!r}", file=sys.stderr)
    return 1


async def _simple(settings: Settings, name: str, action: str) -> int:
    async with _connection(settings) as conn:
        if await store.get_destination(conn, name) is None:
            return _missing(name)
        try:  # done with its event, or not at all
            if action == "destination.removed":
                done = await store.remove_destination(conn, name, by=BY_CLI)
            else:
                done = await store.set_paused(conn, name, action == "destination.paused", by=BY_CLI)
        except RECORD_FAILURES as exc:
            raise unwritable(action, exc) from None
    if not done:
        return _missing(name)
    print(f"destination {name!r} {action.split('.')[1]}")
    return 0


async def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    return await _simple(settings, args.name, "destination.removed")


async def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    return await _simple(settings, args.name, "destination.paused")


async def cmd_resume(settings: Settings, args: argparse.Namespace) -> int:
    return await _simple(settings, args.name, "destination.resumed")


async def cmd_test(settings: Settings, args: argparse.Namespace) -> int:
    async with _connection(settings) as conn:
        destination = await store.get_destination(conn, args.name)
        if destination is None:
            return _missing(args.name)
        secret = await store.read_secret(conn, destination.id)
    await audit_cli_action(
        settings, "destination.tested", entity=admin.entity(args.name), metadata={"name": args.name}
    )
    result = await send_test(destination, secret, actor="cli")
    status = f"HTTP {result.status}" if result.status is not None else "no status"
    if result.delivered:
        print(f"delivered test event {result.event_id} ({status}): {result.reply}")
        return 0
    print(f"auditq: test event not delivered ({status}): {result.error}", file=sys.stderr)
    return 1


async def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    async with _connection(settings) as conn:
        destination = await store.get_destination(conn, args.name)
        if destination is None:
            return _missing(args.name)
        try:  # moved with its destination.backfilled event, or not at all
            lag_events = await admin.backfill(conn, BY_CLI, destination, args.since)
        except RECORD_FAILURES as exc:
            raise unwritable("destination.backfilled", exc) from None
    if lag_events is None:
        return _missing(args.name)
    print(f"destination {args.name!r} sends again the rows stored since {args.since.isoformat()}")
    print(f"({lag_events} rows to send)")
    return 0


def add_parsers(sub: Any) -> None:
    """Add `destinations …` to the `auditq` subcommands."""
    group_help = "Stream the audit log to webhooks, syslog, Splunk HEC or Elasticsearch."
    actions = add_group(sub, "destinations", group_help)

    list_help = "List destinations with their state, lag and counters (never secrets)."
    listing = add_command(actions, "list", cmd_list, list_help)
    listing.add_argument("--json", action="store_true", help="print the API's JSON items")

    add_help = "Add a destination: it gets every row stored from now on (or since --since)."
    add = add_command(actions, "add", cmd_add, add_help)
    add.add_argument("name", help=NAME_HELP)
    add.add_argument("--type", required=True, choices=store.KINDS)
    add.add_argument(
        "--url",
        required=True,
        help="https://… (webhook, splunk-hec, elasticsearch[/INDEX]); tcp:// or tls:// (syslog)",
    )
    add.add_argument("--format", default="json", choices=store.FORMATS, help="default json")
    add.add_argument("--filter", default="", help="§7 filters as a query string")
    add.add_argument(
        "--secret-file", help="file holding the HMAC secret / HEC token / Elasticsearch API key"
    )
    add.add_argument("--since", type=_time, help="also send the rows stored since this time")
    add.add_argument(
        "--allow-private",
        action="store_true",
        help="allow private and loopback addresses (link-local/metadata ones stay refused)",
    )
    add.add_argument("--ca-file", help="PEM CA certificate to verify the receiver's TLS with")
    add.add_argument("--host", help="syslog HOSTNAME / HEC host (default: this machine's name)")
    add.add_argument("--source", help="HEC source (default auditq)")
    add.add_argument("--sourcetype", help="HEC sourcetype")
    add.add_argument("--index", help="HEC index, or the Elasticsearch index")
    add.add_argument(
        "--ocsf-class",
        action="append",
        metavar="PREFIX=CLASS",
        help="map actions starting with PREFIX to an OCSF class (repeatable)",
    )

    for name, command, text in (
        ("remove", cmd_remove, "Remove a destination (its position and secret go too)."),
        ("pause", cmd_pause, "Pause a destination: rows wait for it, none is lost."),
        ("resume", cmd_resume, "Resume a paused destination where it stopped."),
        ("test", cmd_test, "Send one synthetic event and print the receiver's reply."),
    ):
        add_command(actions, name, command, text).add_argument("name")
    backfill_help = "Send again every row stored since a time."
    backfill = add_command(actions, "backfill", cmd_backfill, backfill_help)
    backfill.add_argument("name")
    backfill.add_argument("--since", required=True, type=_time)
