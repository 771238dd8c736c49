"""The `auditq` command line: one parser made of every command group, and its error handling."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from service import logs
from service.capture import cli as capture
from service.cli import (
    destinations,
    emit,
    receipts,
    serve,
    subjects,
    tasks,
    tokens,
    verify,
    witness,
)
from service.cli import policy as policy_cli
from service.errors import AuditqError
from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditq", description="Audit events into PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (
        serve,
        emit,
        tokens,
        tasks,
        verify,
        subjects,
        policy_cli,
        receipts,
        witness,
        destinations,
        capture,
    ):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one auditq command; a user mistake is one line on stderr and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        # A fresh run owns its stack: URLs published by an earlier run are not reused.
        settings = Settings.from_env(published=args.command is not serve.cmd_run)
        logs.configure(
            log_format=settings.log_format,
            level=settings.log_level,
            extra_keys=settings.redact_extra_keys,
        )
        if args.command is serve.cmd_run:
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
