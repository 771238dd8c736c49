"""Settings: the environment, read once into one frozen object.

Each setting is declared once, as a field of `Settings`: its variable, how its text is read, its
type, default, unit and meaning. `SETTINGS` lists the declarations; tests check
docs/configuration.md and deploy/env.example against them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from service.connections import parse_redis_url
from service.errors import ConfigError

ENV_FILE_NAME = "env"  # under the data dir, written by `auditq run`
PRODUCER_ENV_FILE_NAME = "producer.env"  # the producer user's URL, written by `auditq run`

T = TypeVar("T")
# How a variable's text (stripped; the default's text when empty) becomes a value: given the
# variable's name for its error message, it returns the value or raises ConfigError.
Reader = Callable[[str, str], T]


@dataclasses.dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: how it is read, its default and what it means."""

    name: str  # AUDITQ_…
    read: Reader[T]
    kind: str  # the type, as docs/configuration.md states it
    default: str  # the text that means the default, as deploy/env.example shows it
    unit: str
    doc: str
    shown: str  # how docs/configuration.md states a default that has no text (`default` "")
    published: bool  # `auditq run` publishes it in <data dir>/env for the other commands

    @property
    def documented_default(self) -> str:
        """The default column of docs/configuration.md."""
        return f"`{self.default}`" if self.default else self.shown

    def get(self, env: Mapping[str, str], published: Mapping[str, str]) -> T:
        """The value `env` sets (a published URL: or the published file), else the default."""
        text = env.get(self.name, "").strip()
        if not text and self.published:
            text = published.get(self.name, "").strip()
        return self.read(self.name, text or self.default)


def setting(
    name: str,
    read: Reader[T],
    kind: str,
    default: str = "",
    unit: str = "",
    *,
    doc: str,
    shown: str = "empty",
    published: bool = False,
) -> T:
    """A `Settings` field read from `name`; its default is what `read` makes of `default`."""
    declared = Setting(name, read, kind, default, unit, doc, shown, published)
    return dataclasses.field(default=read(name, default), metadata={"setting": declared})


# --- readers ------------------------------------------------------------------------------------


def _text(name: str, text: str) -> str:
    return text


def _optional_text(name: str, text: str) -> str | None:
    return text or None


def _path(name: str, text: str) -> Path:
    return Path(text)


def _optional_path(name: str, text: str) -> Path | None:
    return Path(text) if text else None


def _on(name: str, text: str) -> bool:
    """`off` (any case) is off; anything else is on."""
    return text.lower() != "off"


def _one(name: str, text: str) -> bool:
    return text == "1"


def _optional_integer(minimum: int) -> Reader[int | None]:
    def read(name: str, text: str) -> int | None:
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {text!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, not {value}")
        return value

    return read


def _integer(minimum: int) -> Reader[int]:
    optional = _optional_integer(minimum)

    def read(name: str, text: str) -> int:
        value = optional(name, text)
        if value is None:
            raise ConfigError(f"{name} must be an integer, not ''")
        return value

    return read


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {text!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, not {text}")
    return value


def _log_format(name: str, text: str) -> str:
    if text not in ("text", "json"):
        raise ConfigError(f"{name} must be 'text' or 'json', not {text!r}")
    return text


def _log_level(name: str, text: str) -> str:
    return text.upper()


def _redis_url(name: str, text: str) -> str | None:
    if text:
        parse_redis_url(text)  # a malformed URL is one clear error, here
    return text or None


def _wait_replicas(name: str, text: str) -> int | None:
    """`auto` is None, else a number of replicas."""
    return None if text.lower() == "auto" else _optional_integer(0)(name, text)


def _spool_dir(name: str, text: str) -> Path | None:
    """A path; `off` is none (and `Settings.spool_disabled`)."""
    return Path(text) if text and text.lower() != "off" else None


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _names(name: str, text: str) -> frozenset[str]:
    return frozenset(_items(text))


def _networks(name: str, text: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks; a bad one is one clear error."""
    networks = []
    for item in _items(text):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated IP addresses or networks, not {item!r}"
            ) from None
    return tuple(networks)


def _urls(what: str, *schemes: str) -> Reader[tuple[str, ...]]:
    """Comma-separated URLs of these schemes (`what`, to a reader), in order, each named once."""

    def read(name: str, text: str) -> tuple[str, ...]:
        urls = tuple(dict.fromkeys(_items(text)))
        for url in urls:
            if not url.startswith(schemes):
                # The URL itself may hold a password: only its scheme is quoted.
                scheme = url.partition("://")[0] if "://" in url else "no scheme"
                raise ConfigError(f"{name} takes {what} URLs, not one with {scheme!r}")
        return urls

    return read


def _origin(name: str, text: str) -> str | None:
    """One line of printable text without spaces or `+`, or None (the default)."""
    if any(c.isspace() or not c.isprintable() for c in text) or "+" in text:
        raise ConfigError(f"{name} must be one word without spaces or '+': {text!r}")
    return text or None


# --- the settings -------------------------------------------------------------------------------

_SECONDS = "number > 0"
_URL_LIST = "comma-separated URLs"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything auditq reads from its environment."""

    # Servers.
    redis_url: str | None = setting(
        "AUDITQ_REDIS_URL",
        _redis_url,
        "URL",
        doc="Redis or Valkey holding the queue",
        shown="embedded Valkey of `auditq run`",
        published=True,
    )
    # Replicas that must confirm a batch before `capture` returns its ids (Redis WAIT), else
    # it is spooled (or refused). None ("auto"): with a Sentinel URL one replica, or none while
    # no replica is connected (counted as unreplicated); 0 otherwise.
    redis_wait_replicas: int | None = setting(
        "AUDITQ_REDIS_WAIT_REPLICAS",
        _wait_replicas,
        "`auto` or integer ≥ 0",
        "auto",
        "replicas",
        doc="replicas that must confirm a batch before a producer counts it accepted",
    )
    database_url: str | None = setting(
        "AUDITQ_DATABASE_URL",
        _optional_text,
        "URL",
        doc="PostgreSQL, as the API's role",
        shown="embedded PostgreSQL of `auditq run`",
        published=True,
    )
    worker_database_url: str | None = setting(
        "AUDITQ_WORKER_DATABASE_URL",
        _optional_text,
        "URL",
        doc="PostgreSQL, as the worker's role (docs/integrity.md)",
        shown="the same as `AUDITQ_DATABASE_URL`",
        published=True,
    )
    # The role `auditq run` migrates with when the servers are external (AUDITQ_DATABASE_URL
    # and AUDITQ_WORKER_DATABASE_URL being the runtime roles').
    owner_database_url: str | None = setting(
        "AUDITQ_OWNER_DATABASE_URL",
        _optional_text,
        "URL",
        doc="PostgreSQL, as the schema owner, for `auditq run` with external servers",
        shown="the same as `AUDITQ_DATABASE_URL`",
        published=True,
    )
    # The worker and the API refuse a superuser, owner or row-altering role; tests of other
    # things and benchmarks may allow it, with a warning.
    allow_privileged_role: bool = setting(
        "AUDITQ_ALLOW_PRIVILEGED_ROLE",
        _one,
        "`1` or empty",
        doc="`1`: the worker and the API start even as a privileged role (never in production)",
    )
    data_dir: Path = setting(
        "AUDITQ_DATA_DIR",
        _path,
        "path",
        "./.auditq",
        doc="data of the embedded servers, the development admin token, the published URLs",
    )
    queue: str = setting("AUDITQ_QUEUE", _text, "string", "audit-logs", doc="the arq queue's name")

    # Admin API.
    http_host: str = setting(
        "AUDITQ_HTTP_HOST", _text, "address", "127.0.0.1", doc="the API's bind address"
    )
    http_port: int = setting(
        "AUDITQ_HTTP_PORT", _integer(0), "integer ≥ 0", "8080", "TCP port", doc="the API's port"
    )
    # `/metrics` wants `Authorization: Bearer <this>` when set (docs/metrics.md). None: open.
    metrics_token: str | None = setting(
        "AUDITQ_METRICS_TOKEN", _optional_text, "string", doc="the bearer token `/metrics` wants"
    )

    # Logs.
    log_format: str = setting(
        "AUDITQ_LOG_FORMAT",
        _log_format,
        "`text` or `json`",
        "text",
        doc="`json`: one JSON object per line",
    )
    log_level: str = setting(
        "AUDITQ_LOG_LEVEL", _log_level, "level name", "INFO", doc="the least level logged"
    )

    # Producer.
    max_event_bytes: int = setting(
        "AUDITQ_MAX_EVENT_BYTES",
        _integer(1024),
        "integer ≥ 1024",
        "65536",
        "bytes",
        doc="the largest encoded event",
    )
    # The largest task (one enqueue's payload, or a merged job) the enqueue function takes and
    # a worker reads; a larger one is refused or set aside unread.
    max_job_bytes: int = setting(
        "AUDITQ_MAX_JOB_BYTES",
        _integer(64 * 1024 + 1024),
        "integer ≥ 66560",
        "8388608",
        "bytes",
        doc="the largest task a worker reads",
    )
    # Producer middlewares (aiohttp, ASGI, Django): peers whose X-Forwarded-For / X-Real-IP
    # name the client (addresses or CIDR networks); any other peer is the client itself.
    trusted_proxies: tuple[str, ...] = setting(
        "AUDITQ_TRUSTED_PROXIES",
        _networks,
        "comma-separated addresses or networks",
        doc="proxies whose X-Forwarded-For / X-Real-IP the producer middlewares believe",
    )
    max_future_s: float = setting(
        "AUDITQ_MAX_FUTURE_S",
        _seconds,
        _SECONDS,
        "300",
        "seconds",
        doc="how far ahead of the server clock an event's `ts` may be",
    )
    capture_timeout_s: float = setting(
        "AUDITQ_CAPTURE_TIMEOUT_S",
        _seconds,
        _SECONDS,
        "0.25",
        "seconds",
        doc="the bound on `await capture(...)`",
    )
    buffer_max_events: int = setting(
        "AUDITQ_BUFFER_MAX_EVENTS",
        _integer(1),
        "integer ≥ 1",
        "100000",
        "events",
        doc="what `capture_nowait` may hold in memory",
    )
    flush_interval_s: float = setting(
        "AUDITQ_FLUSH_INTERVAL_S",
        _seconds,
        _SECONDS,
        "0.005",
        "seconds",
        doc="a batch is sent at most this long after its first event",
    )
    flush_max_events: int = setting(
        "AUDITQ_FLUSH_MAX_EVENTS",
        _integer(1),
        "integer ≥ 1",
        "500",
        "events",
        doc="a batch is sent once it holds this many",
    )
    redact_extra_keys: frozenset[str] = setting(
        "AUDITQ_REDACT_EXTRA_KEYS",
        _names,
        "comma-separated names",
        doc="keys redacted on top of the built-in rules",
    )
    # Producer spool (service/producer/spool.py): where events Redis cannot take are kept until
    # it can. None: no spool, except that `auditq run` and `auditq api` default to
    # <data_dir>/spool unless spool_disabled (AUDITQ_SPOOL_DIR=off).
    spool_dir: Path | None = setting(
        "AUDITQ_SPOOL_DIR",
        _spool_dir,
        "path, or `off`",
        doc="where events Redis cannot take are kept until it can",
        shown="`<AUDITQ_DATA_DIR>/spool` for `auditq run` and `auditq api`; no spool elsewhere",
    )
    spool_disabled: bool = False  # AUDITQ_SPOOL_DIR=off
    spool_max_bytes: int = setting(
        "AUDITQ_SPOOL_MAX_BYTES",
        _integer(1024 * 1024),
        "integer ≥ 1048576",
        "1073741824",
        "bytes",
        doc="the spool's bound (1 GiB by default)",
    )

    # Worker. The retry policy itself is written out in workers/retry.py.
    worker_max_jobs: int = setting(
        "AUDITQ_WORKER_MAX_JOBS",
        _integer(1),
        "integer ≥ 1",
        "10",
        "jobs",
        doc="jobs one worker process runs at once",
    )
    job_timeout_s: float = setting(
        "AUDITQ_JOB_TIMEOUT_S",
        _seconds,
        _SECONDS,
        "60",
        "seconds",
        doc="a job running longer is retried",
    )
    db_pool_size: int = setting(
        "AUDITQ_DB_POOL_SIZE",
        _integer(1),
        "integer ≥ 1",
        "10",
        "connections",
        doc="PostgreSQL connections per process",
    )
    dead_letter_ttl_days: int = setting(
        "AUDITQ_DEAD_LETTER_TTL_DAYS",
        _integer(1),
        "integer ≥ 1",
        "90",
        "days",
        doc="how long a failed task stays in the dead letter",
    )
    retention_days: int | None = setting(
        "AUDITQ_RETENTION_DAYS",
        _optional_integer(1),
        "integer ≥ 1",
        "",
        "days",
        doc="no longer read: retention is the store's policy (`auditq policy set`)",
        shown="none (ignored)",
    )
    partitions_ahead_months: int = setting(
        "AUDITQ_PARTITIONS_AHEAD_MONTHS",
        _integer(1),
        "integer ≥ 1",
        "3",
        "months",
        doc="monthly partitions made ahead",
    )

    # Integrity (docs/integrity.md).
    seal_key_file: Path | None = setting(
        "AUDITQ_SEAL_KEY_FILE",
        _optional_path,
        "path",
        doc="the Ed25519 private key that signs checkpoints (`seal_key_path`)",
        shown="`<AUDITQ_DATA_DIR>/seal-key`",
    )
    seal_interval_s: float = setting(
        "AUDITQ_SEAL_INTERVAL_S",
        _seconds,
        _SECONDS,
        "10",
        "seconds",
        doc="a stored row is covered by a signed checkpoint at most this long after",
    )
    seal_state_file: Path | None = setting(
        "AUDITQ_SEAL_STATE_FILE",
        _optional_path,
        "path",
        doc="the last checkpoint this sealer signed (`seal_state_path`)",
        shown="`<AUDITQ_SEAL_KEY_FILE>.state`",
    )
    log_origin: str | None = setting(
        "AUDITQ_LOG_ORIGIN",
        _origin,
        "text, no spaces or `+`",
        doc="the origin line of the checkpoints",
        shown="`auditq/<database name>`",
    )
    witness_urls: tuple[str, ...] = setting(
        "AUDITQ_WITNESS_URLS",
        _urls("http(s)://", "http://", "https://"),
        _URL_LIST,
        doc="witnesses every new checkpoint is sent to",
    )
    sealing: bool = setting(
        "AUDITQ_SEAL",
        _on,
        "`on` or `off`",
        "on",
        doc="`off`: this worker makes no checkpoints (benchmarks)",
    )

    # Erasure (docs/erasure.md).
    subject_entity_types: frozenset[str] = setting(
        "AUDITQ_SUBJECT_ENTITY_TYPES",
        lambda name, text: _names(name, text) or frozenset({"user"}),  # naming none: the default
        "comma-separated names",
        "user",
        doc="entity types whose id is a data subject's",
    )
    subject_key_file: Path | None = setting(
        "AUDITQ_SUBJECT_KEY_FILE",
        _optional_path,
        "path",
        doc="the key of subjects' pseudonyms, never in the database (`subject_key_path`)",
        shown="`<AUDITQ_DATA_DIR>/subject-key`",
    )

    # Destinations (docs/destinations.md).
    destination_retry_max_s: float = setting(
        "AUDITQ_DESTINATION_RETRY_MAX_S",
        _seconds,
        _SECONDS,
        "60",
        "seconds",
        doc="the longest pause between delivery attempts",
    )
    destinations: bool = setting(
        "AUDITQ_DESTINATIONS",
        _on,
        "`on` or `off`",
        "on",
        doc="`off`: this worker delivers to no destination",
    )

    # Capture (docs/capture.md).
    capture_database_urls: tuple[str, ...] = setting(
        "AUDITQ_CAPTURE_DATABASE_URLS",
        _urls("postgresql://", "postgresql://", "postgres://"),
        _URL_LIST,
        doc="application databases whose outboxes this worker relays",
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, published: bool = True
    ) -> Settings:
        """Build settings from AUDITQ_* variables, rejecting bad values with one clear message."""
        env = os.environ if environ is None else environ
        data_dir = _DATA_DIR.get(env, {})
        # `auditq run` publishes the URLs of its embedded stack; other commands pick them up.
        urls = read_env_file(data_dir / ENV_FILE_NAME) if published else {}
        values: dict[str, Any] = {field: s.get(env, urls) for field, s in _DECLARED.items()}
        spool = env.get(_SPOOL_DIR.name, "").strip().lower()
        return cls(**values, spool_disabled=spool == "off")

    def with_server_spool(self) -> Settings:
        """These settings with the spool `auditq run` and `auditq api` use by default."""
        if self.spool_disabled:
            return dataclasses.replace(self, spool_dir=None)
        return dataclasses.replace(self, spool_dir=self.spool_dir or self.data_dir / "spool")

    def require_redis(self) -> str:
        """The Redis URL; one clear error when there is none."""
        return self._require(self.redis_url, "Redis", "AUDITQ_REDIS_URL")

    def require_database(self) -> str:
        """The PostgreSQL URL; one clear error when there is none."""
        return self._require(self.database_url, "PostgreSQL", "AUDITQ_DATABASE_URL")

    def _require(self, url: str | None, server: str, variable: str) -> str:
        if not url:
            raise ConfigError(
                f"no {server} to talk to: set {variable}, or start `auditq run` "
                f"(its URLs are then read from {self.env_file})"
            )
        return url

    @property
    def seal_key_path(self) -> Path:
        """The Ed25519 private key the sealer signs checkpoints with."""
        return self.seal_key_file or self.data_dir / "seal-key"

    @property
    def seal_state_path(self) -> Path:
        """The last checkpoint the sealer signed (docs/integrity.md), beside the key."""
        key = self.seal_key_path
        return self.seal_state_file or key.with_name(key.name + ".state")

    @property
    def subject_key_path(self) -> Path:
        """The key of subjects' pseudonyms (HMAC-SHA256), never in the database."""
        return self.subject_key_file or self.data_dir / "subject-key"

    @property
    def worker_url(self) -> str | None:
        """The URL the worker connects as (its own role when set)."""
        return self.worker_database_url or self.database_url

    @property
    def env_file(self) -> Path:
        """Where `auditq run` publishes the URLs of its embedded stack."""
        return self.data_dir / ENV_FILE_NAME

    @property
    def producer_env_file(self) -> Path:
        """Where `auditq run` writes the producer user's Redis URL, for producers to source."""
        return self.data_dir / PRODUCER_ENV_FILE_NAME


_DECLARED: dict[str, Setting[Any]] = {
    field.name: field.metadata["setting"]
    for field in dataclasses.fields(Settings)
    if "setting" in field.metadata
}
SETTINGS: tuple[Setting[Any], ...] = tuple(_DECLARED.values())  # every variable auditq reads
_DATA_DIR: Setting[Path] = _DECLARED["data_dir"]
_SPOOL_DIR: Setting[Path | None] = _DECLARED["spool_dir"]


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines; a missing file is empty."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}
