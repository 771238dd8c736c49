"""The producer's Redis user: it may run the enqueue function and nothing else.

Redis checks the caller's ACL for every command a function runs, so a user allowed only
FCALL could not enqueue at all, and one allowed the job writes could rewrite any job. The
producer user is therefore allowed FCALL (the functions auditq loaded), and inside it only
RPUSH onto its queue's inbox (plus TIME and WAIT, which touch no key); service/queue/enqueue.lua
puts its batches there and workers move them into jobs. It cannot read, change or delete a
task, a dead letter or any other key auditq keeps (tests/test_producer_acl.py).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

PRODUCER_USER = "auditq-producer"
INBOX_PREFIX = "auditq:inbox:"  # service/queue/enqueue.lua
_GLOB = re.compile(r"([*?\[\]\\])")


def _literal(name: str) -> str:
    """A key name as an ACL pattern that matches it alone."""
    return _GLOB.sub(r"\\\1", name)


def acl_rules(queue: str) -> list[str]:
    """The ACL rules of the producer user of `queue`, after `reset`."""
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        "+fcall",  # the functions auditq loaded (a function runs with the caller's rights)
        "+ping",
        "+hello",
        "+auth",
        "+wait",  # replicas confirming a batch (AUDITQ_REDIS_WAIT_REPLICAS)
        "+time",  # inside the function: the task's time
        "+rpush",  # inside the function: onto the inbox, the one key it may write
        f"~{_literal(queue)}",  # FCALL's declared key (no command here can use it)
        f"%W~{_literal(INBOX_PREFIX + queue)}",  # write-only: it cannot read the inbox back
    ]


def acl_line(queue: str, password: str = "<password>", *, user: str = PRODUCER_USER) -> str:
    """The ACL SETUSER command that makes the producer user of `queue`."""
    return " ".join(["ACL", "SETUSER", user, "reset", "on", f">{password}", *acl_rules(queue)])


async def ensure_producer_user(
    redis: Any, queue: str, password: str, *, user: str = PRODUCER_USER
) -> None:
    """Make (or reset) the producer user of `queue` with `password`."""
    await redis.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", *acl_rules(queue)
    )


def with_user(url: str, user: str, password: str) -> str:
    """`url` (redis:// or rediss://) with this user and password, the user name spelled out
    (`redis://:PW@` makes some clients send AUTH "" PW, which Redis refuses)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
