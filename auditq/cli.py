"""The `auditq` command: the server's CLI, or one clear line in a producer-only install."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `auditq`; without the server extra, say how to install it."""
    try:
        from service.cli.main import main as server_main
    except ModuleNotFoundError as exc:
        print(
            f"auditq: the command line is part of the server ({exc.name} is not installed):"
            " pip install 'auditq[server]'",
            file=sys.stderr,
        )
        return 2
    return server_main(argv)
