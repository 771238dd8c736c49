"""Redis connections from AUDITQ_REDIS_URL: one server, or the primary that Sentinel names.

Accepted URLs:

- `redis://[user:password@]HOST[:PORT][/DB]`, `rediss://…` (TLS), `unix://[user:password@]/PATH`
  (redis-py's own forms, query options included);
- `redis+sentinel://[user:password@]HOST[:PORT][,HOST[:PORT]…]/SERVICE_NAME[/DB]` and
  `rediss+sentinel://…` (TLS to the Sentinels and the primary): the Sentinels to ask (port
  26379 by default) and the name of the service they watch. The credentials authenticate to
  the primary; the Sentinels are asked without them.

A client made here follows the current primary: every new connection asks the Sentinels where
it is, a connection to a primary that died or was demoted fails (a `READONLY` reply becomes a
connection error) and, under the retry policy the caller gives, is made again to the new one.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from service.errors import ConfigError
from service.redaction import redact_sensitive_in_string

SENTINEL_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
DIRECT_SCHEMES: Final = ("redis", "rediss", "unix")
SENTINEL_PORT: Final = 26379
SENTINEL_TIMEOUT = 1.0  # seconds a Sentinel gets to say where the primary is, when none given

_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))(?::(?P<port>\d*))?$"
)
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

R = TypeVar("R", bound=Redis)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisTarget:
    """Where Redis is, as read from a URL; `sentinels` is empty for one server."""

    url: str = dataclasses.field(repr=False)  # may hold a password: never log it; `display`
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl: bool = False

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def display(self) -> str:
        """The URL without its credentials, for logs and messages."""
        return redact_url(self.url)


class _SentinelPool(SentinelConnectionPool):
    """The primary's pool, which also closes the connections to the Sentinels when closed."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client is closed (a primary change passes False)
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


def redact_url(url: str) -> str:
    """`url` with any user and password replaced by `***`, and any credential in its path
    or query redacted (service/redaction.py)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact_sensitive_in_string(url)
    # A password may hold "/", "?", "#" or "@" unencoded: everything up to the last "@" is
    # taken as the user and password (a "@" in a path only hides more than it must).
    _, at, after = rest.rpartition("@")
    if at:
        rest = "***@" + after
    return redact_sensitive_in_string(f"{scheme}{sep}{rest}")


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis URL; a malformed one raises ConfigError with one sentence saying why."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel(url, scheme)
    if scheme not in DIRECT_SCHEMES:
        raise ConfigError(
            f"AUDITQ_REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// "
            f"or rediss+sentinel://, not {redact_url(url)!r}"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"AUDITQ_REDIS_URL {redact_url(url)!r} is malformed: {exc}") from None
    db = 0
    if scheme != "unix":
        if not parts.hostname:
            raise ConfigError(f"AUDITQ_REDIS_URL {redact_url(url)!r} names no host")
        db = _db(url, parts.path.lstrip("/"))
    elif not parts.path:
        raise ConfigError(f"AUDITQ_REDIS_URL {redact_url(url)!r} names no socket path")
    return RedisTarget(
        url=url,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=scheme == "rediss",
    )


def _parse_sentinel(url: str, scheme: str) -> RedisTarget:
    shown = redact_url(url)
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ConfigError(f"AUDITQ_REDIS_URL {shown!r}: a Sentinel URL takes no query options")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = []
    for item in hosts.split(","):
        match = _HOST_PORT.match(item.strip())
        port = int(match["port"]) if match and match["port"] else SENTINEL_PORT
        if match is None or not 0 < port < 65536:
            raise ConfigError(
                f"AUDITQ_REDIS_URL {shown!r}: {item.strip()!r} is not a Sentinel HOST:PORT"
            )
        sentinels.append((match["v6"] or match["host"], port))
    segments = path.split("/") if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or len(segments) > 2 or not _SERVICE.match(segments[0]):
        raise ConfigError(
            f"AUDITQ_REDIS_URL {shown!r} must end in /SERVICE_NAME or /SERVICE_NAME/DB, the "
            "name the Sentinels watch (letters, digits, '.', '_', '-')"
        )
    return RedisTarget(
        url=url,
        sentinels=tuple(sentinels),
        service_name=segments[0],
        db=_db(url, segments[1] if len(segments) == 2 else ""),
        username=username,
        password=password,
        ssl=SENTINEL_SCHEMES[scheme],
    )


def _db(url: str, text: str) -> int:
    if not text:
        return 0
    if not text.isdigit() or int(text) > 10_000:
        raise ConfigError(
            f"AUDITQ_REDIS_URL {redact_url(url)!r}: the database must be a number, not {text!r}"
        )
    return int(text)


def redis_client(
    url: str | RedisTarget,
    *,
    connect_timeout: float | None = None,
    timeout: float | None = None,
    retry: Retry | None = None,
    retry_on_error: list[type[Exception]] | None = None,
    redis_class: type[R] = Redis,  # type: ignore[assignment]
    **options: Any,
) -> R:
    """A client of the URL's Redis (for Sentinel: of the current primary); no I/O yet."""
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url)
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": timeout,
        **options,
    }
    if retry is not None:
        kwargs.update(retry=retry, retry_on_error=retry_on_error)
    if not target.is_sentinel:
        direct: R = redis_class.from_url(target.url, **kwargs)
        return direct
    reach = connect_timeout or timeout or SENTINEL_TIMEOUT
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        # Explicit, so that a Sentinel that hangs cannot hang the question (redis-py would
        # otherwise give them only the socket options, and no timeout when none is set).
        sentinel_kwargs={
            "socket_connect_timeout": reach,
            "socket_timeout": reach,
            "ssl": target.ssl,
        },
        ssl=target.ssl,
    )
    client: R = sentinel.master_for(
        target.service_name,
        redis_class=redis_class,
        connection_pool_class=_SentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    return client
