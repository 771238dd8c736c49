"""Settings: the environment, read once into one frozen object."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from service.connections import parse_redis_url
from service.errors import ConfigError

ENV_FILE_NAME = "env"  # under the data dir, written by `auditq run`
PRODUCER_ENV_FILE_NAME = "producer.env"  # the producer user's URL, written by `auditq run`


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything auditq reads from its environment."""

    redis_url: str | None = None  # None: the embedded Valkey
    database_url: str | None = None  # None: the embedded PostgreSQL
    data_dir: Path = Path(".auditq")
    queue: str = "audit-logs"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_format: str = "text"
    log_level: str = "INFO"

    # Producer.
    max_event_bytes: int = 64 * 1024
    capture_timeout_s: float = 0.25
    buffer_max_events: int = 100_000
    flush_interval_s: float = 0.005
    flush_max_events: int = 500
    redact_extra_keys: frozenset[str] = frozenset()
    # Producer middlewares (aiohttp, ASGI, Django): peers whose X-Forwarded-For / X-Real-IP
    # name the client (addresses or CIDR networks); any other peer is the client itself.
    trusted_proxies: tuple[str, ...] = ()
    # Producer spool (service/producer/spool.py): where events Redis cannot take are kept until it
    # can. None: no spool, except that `auditq run` and `auditq api` default to
    # <data_dir>/spool unless spool_disabled (AUDITQ_SPOOL_DIR=off).
    spool_dir: Path | None = None
    spool_disabled: bool = False
    spool_max_bytes: int = 1024 * 1024 * 1024
    # Replicas that must confirm a batch before `capture` returns its ids (Redis WAIT), else
    # it is spooled (or refused). None ("auto", the default): with a Sentinel URL one replica,
    # or none while no replica is connected (counted as unreplicated); 0 otherwise.
    redis_wait_replicas: int | None = None
    # The largest task (one enqueue's payload, or a merged job) the enqueue function takes and
    # a worker reads (AUDITQ_MAX_JOB_BYTES); a larger one is refused or set aside unread.
    max_job_bytes: int = 8 * 1024 * 1024

    # Worker. The retry policy itself is written out in workers/retry.py.
    worker_max_jobs: int = 10
    job_timeout_s: float = 60.0
    db_pool_size: int = 10
    dead_letter_ttl_days: int = 90
    retention_days: int | None = None
    partitions_ahead_months: int = 3

    # Integrity (docs/integrity.md). The worker's role may differ from the API's (.auditq/env).
    worker_database_url: str | None = None  # None: database_url
    seal_interval_s: float = 10.0
    seal_key_file: Path | None = None  # None: <data_dir>/seal-key
    sealing: bool = True  # AUDITQ_SEAL=off: this worker makes no checkpoints (benchmarks)
    seal_state_file: Path | None = None  # None: beside the seal key, <key>.state
    log_origin: str | None = None  # None: auditq/<database name>
    witness_urls: tuple[str, ...] = ()  # witnesses every new checkpoint is sent to
    max_future_s: float = 300.0

    # Erasure (docs/erasure.md): an entity of these types whose id is the subject is the subject.
    subject_entity_types: frozenset[str] = frozenset({"user"})
    subject_key_file: Path | None = None  # None: <data_dir>/subject-key (never in the database)
    # The role `auditq run` migrates with when the servers are external (AUDITQ_DATABASE_URL
    # and AUDITQ_WORKER_DATABASE_URL being the runtime roles'). None: AUDITQ_DATABASE_URL.
    owner_database_url: str | None = None
    # The worker and the API refuse a superuser, owner or row-altering role; tests of other
    # things and benchmarks may allow it (AUDITQ_ALLOW_PRIVILEGED_ROLE=1), with a warning.
    allow_privileged_role: bool = False
    # `/metrics` wants `Authorization: Bearer <this>` when set (docs/metrics.md). None: open.
    metrics_token: str | None = None

    # Capture (docs/capture.md): application databases whose outboxes this worker relays.
    capture_database_urls: tuple[str, ...] = ()

    # Destinations (docs/destinations.md): the longest pause between delivery attempts, and
    # whether this worker delivers (AUDITQ_DESTINATIONS=off: leave it to other workers).
    destination_retry_max_s: float = 60.0
    destinations: bool = True

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, published: bool = True
    ) -> Settings:
        """Build settings from AUDITQ_* variables, rejecting bad values with one clear message."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("AUDITQ_DATA_DIR", ".auditq"))
        # `auditq run` publishes the URLs of its embedded stack; other commands pick them up.
        urls = read_env_file(data_dir / ENV_FILE_NAME) if published else {}

        def url(name: str) -> str | None:
            return env.get(name) or urls.get(name) or None

        log_format = env.get("AUDITQ_LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"AUDITQ_LOG_FORMAT must be 'text' or 'json', not {log_format!r}")
        retention = _int(env, "AUDITQ_RETENTION_DAYS", None, minimum=1)
        extra = env.get("AUDITQ_REDACT_EXTRA_KEYS", "")
        spool = env.get("AUDITQ_SPOOL_DIR", "").strip()
        spool_disabled = spool.lower() == "off"
        redis_url = url("AUDITQ_REDIS_URL")
        if redis_url is not None:
            parse_redis_url(redis_url)  # a malformed URL is one clear error, here
        key_file = env.get("AUDITQ_SEAL_KEY_FILE", "").strip()
        state_file = env.get("AUDITQ_SEAL_STATE_FILE", "").strip()
        subject_key = env.get("AUDITQ_SUBJECT_KEY_FILE", "").strip()
        return cls(
            redis_url=redis_url,
            database_url=url("AUDITQ_DATABASE_URL"),
            data_dir=data_dir,
            queue=env.get("AUDITQ_QUEUE", "audit-logs") or "audit-logs",
            http_host=env.get("AUDITQ_HTTP_HOST", "127.0.0.1"),
            http_port=_req_int(env, "AUDITQ_HTTP_PORT", 8080, minimum=0),
            log_format=log_format,
            log_level=env.get("AUDITQ_LOG_LEVEL", "INFO").upper(),
            max_event_bytes=_req_int(env, "AUDITQ_MAX_EVENT_BYTES", 64 * 1024, minimum=1024),
            capture_timeout_s=_float(env, "AUDITQ_CAPTURE_TIMEOUT_S", 0.25),
            buffer_max_events=_req_int(env, "AUDITQ_BUFFER_MAX_EVENTS", 100_000, minimum=1),
            flush_interval_s=_float(env, "AUDITQ_FLUSH_INTERVAL_S", 0.005),
            flush_max_events=_req_int(env, "AUDITQ_FLUSH_MAX_EVENTS", 500, minimum=1),
            redact_extra_keys=frozenset(k.strip() for k in extra.split(",") if k.strip()),
            spool_dir=Path(spool) if spool and not spool_disabled else None,
            spool_disabled=spool_disabled,
            spool_max_bytes=_req_int(
                env, "AUDITQ_SPOOL_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024 * 1024
            ),
            redis_wait_replicas=_wait_replicas(env),
            max_job_bytes=_req_int(
                env, "AUDITQ_MAX_JOB_BYTES", 8 * 1024 * 1024, minimum=64 * 1024 + 1024
            ),
            worker_max_jobs=_req_int(env, "AUDITQ_WORKER_MAX_JOBS", 10, minimum=1),
            job_timeout_s=_float(env, "AUDITQ_JOB_TIMEOUT_S", 60.0),
            db_pool_size=_req_int(env, "AUDITQ_DB_POOL_SIZE", 10, minimum=1),
            dead_letter_ttl_days=_req_int(env, "AUDITQ_DEAD_LETTER_TTL_DAYS", 90, minimum=1),
            retention_days=retention,
            partitions_ahead_months=_req_int(env, "AUDITQ_PARTITIONS_AHEAD_MONTHS", 3, minimum=1),
            worker_database_url=url("AUDITQ_WORKER_DATABASE_URL"),
            seal_interval_s=_float(env, "AUDITQ_SEAL_INTERVAL_S", 10.0),
            seal_key_file=Path(key_file) if key_file else None,
            sealing=env.get("AUDITQ_SEAL", "on").strip().lower() != "off",
            seal_state_file=Path(state_file) if state_file else None,
            log_origin=_origin(env.get("AUDITQ_LOG_ORIGIN", "").strip()),
            witness_urls=_witness_urls(env.get("AUDITQ_WITNESS_URLS", "")),
            max_future_s=_float(env, "AUDITQ_MAX_FUTURE_S", 300.0),
            subject_entity_types=_names(env, "AUDITQ_SUBJECT_ENTITY_TYPES", frozenset({"user"})),
            capture_database_urls=_urls(env, "AUDITQ_CAPTURE_DATABASE_URLS"),
            subject_key_file=Path(subject_key) if subject_key else None,
            owner_database_url=url("AUDITQ_OWNER_DATABASE_URL"),
            allow_privileged_role=env.get("AUDITQ_ALLOW_PRIVILEGED_ROLE", "").strip() == "1",
            metrics_token=env.get("AUDITQ_METRICS_TOKEN", "").strip() or None,
            destination_retry_max_s=_float(env, "AUDITQ_DESTINATION_RETRY_MAX_S", 60.0),
            destinations=env.get("AUDITQ_DESTINATIONS", "on").strip().lower() != "off",
            trusted_proxies=_networks(env, "AUDITQ_TRUSTED_PROXIES"),
        )

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


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines; a missing file is empty."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _int(env: Mapping[str, str], name: str, default: int | None, *, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _req_int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _int(env, name, default, minimum=minimum)
    return default if value is None else value


def _wait_replicas(env: Mapping[str, str]) -> int | None:
    """AUDITQ_REDIS_WAIT_REPLICAS: `auto` (or unset) is None, else a number of replicas."""
    if env.get("AUDITQ_REDIS_WAIT_REPLICAS", "").strip().lower() in ("", "auto"):
        return None
    return _int(env, "AUDITQ_REDIS_WAIT_REPLICAS", None, minimum=0)


def _names(env: Mapping[str, str], name: str, default: frozenset[str]) -> frozenset[str]:
    """A comma-separated list; unset or blank gives the default."""
    names = frozenset(n.strip() for n in env.get(name, "").split(",") if n.strip())
    return names or default


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of PostgreSQL URLs, in order, each named once."""
    urls = tuple(dict.fromkeys(u.strip() for u in env.get(name, "").split(",") if u.strip()))
    for url in urls:
        if not url.startswith(("postgresql://", "postgres://")):
            # The URL itself may hold a password: only its scheme is quoted.
            scheme = url.partition("://")[0] if "://" in url else "no scheme"
            raise ConfigError(f"{name} takes postgresql:// URLs, not one with {scheme!r}")
    return urls


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, not {raw}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks; a bad one is one clear error."""
    networks = []
    for item in env.get(name, "").split(","):
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated IP addresses or networks, not {text!r}"
            ) from None
    return tuple(networks)


def _origin(value: str) -> str | None:
    """AUDITQ_LOG_ORIGIN: one line of printable text without spaces, or None (the default)."""
    if not value:
        return None
    if any(c.isspace() or not c.isprintable() for c in value) or "+" in value:
        raise ConfigError(f"AUDITQ_LOG_ORIGIN must be one word without spaces or '+': {value!r}")
    return value


def _witness_urls(value: str) -> tuple[str, ...]:
    """AUDITQ_WITNESS_URLS: comma-separated http(s) URLs."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"AUDITQ_WITNESS_URLS holds {url!r}: not an http(s) URL")
    return urls
