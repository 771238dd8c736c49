"""arq's Redis for the worker: its settings from AUDITQ_REDIS_URL (Sentinel too), its pool."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError

from service.connections import RedisTarget, parse_redis_url, redis_client

logger = logging.getLogger(__name__)


def arq_settings(
    url: str,
    *,
    retry: Retry | None = None,
    retry_on_error: list[type[Exception]] | None = None,
    connect_timeout: float = 1.0,
    conn_retries: int = 5,
) -> RedisSettings:
    """arq's RedisSettings for the URL (Sentinel: `sentinel=True`, the Sentinels as hosts).

    arq 0.28 drops the timeouts and the retry policy of a Sentinel pool: `create_arq_pool`
    makes the pool from these settings with them.
    """
    target = parse_redis_url(url)
    if target.is_sentinel:
        settings = RedisSettings(
            host=list(target.sentinels),
            sentinel=True,
            sentinel_master=target.service_name,
            database=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
        )
    else:
        settings = RedisSettings.from_dsn(url)
    settings.retry = retry
    settings.retry_on_error = retry_on_error
    settings.conn_timeout = connect_timeout  # type: ignore[assignment]  # arq: int, used as float
    settings.conn_retries = conn_retries
    return settings


async def create_arq_pool(
    settings: RedisSettings,
    *,
    job_serializer: Any = None,
    job_deserializer: Any = None,
    default_queue_name: str,
    expires_extra_ms: int,
) -> ArqRedis:
    """arq's pool for `settings`, answering a PING (tried as arq's create_pool tries it).

    Not arq's create_pool: a pool whose PING fails or is cancelled (a worker stopped while it
    starts) is closed here, where arq drops it with its connection open.
    """
    attempt = 0
    while True:
        pool = _arq_redis(settings)
        pool.job_serializer = job_serializer
        pool.job_deserializer = job_deserializer
        pool.default_queue_name = default_queue_name
        pool.expires_extra_ms = expires_extra_ms
        try:
            await pool.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await pool.aclose()
            if attempt >= settings.conn_retries:
                raise
            attempt += 1
            logger.warning(
                "Redis does not answer (%s); %d tries left",
                type(exc).__name__,
                settings.conn_retries - attempt + 1,
            )
            await asyncio.sleep(settings.conn_retry_delay)
            continue
        except asyncio.CancelledError:
            await pool.aclose()
            raise
        return pool


def _arq_redis(settings: RedisSettings) -> ArqRedis:
    """A pool for `settings` as arq makes it; for Sentinel with the timeouts and retry policy
    arq drops. No I/O yet."""
    if not settings.sentinel:
        return ArqRedis(
            host=settings.host,
            port=settings.port,
            unix_socket_path=settings.unix_socket_path,
            socket_connect_timeout=settings.conn_timeout,
            ssl=settings.ssl,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_certfile=settings.ssl_certfile,
            ssl_cert_reqs=settings.ssl_cert_reqs,
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_ca_data=settings.ssl_ca_data,
            ssl_check_hostname=settings.ssl_check_hostname,
            retry=settings.retry,
            retry_on_timeout=settings.retry_on_timeout,
            retry_on_error=settings.retry_on_error,
            max_connections=settings.max_connections,
            db=settings.database,
            username=settings.username,
            password=settings.password,
            encoding="utf8",
        )
    assert isinstance(settings.host, list)
    target = RedisTarget(
        url="redis+sentinel://",
        sentinels=tuple((host, int(port)) for host, port in settings.host),
        service_name=settings.sentinel_master,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        ssl=settings.ssl,
    )
    return redis_client(
        target,
        connect_timeout=settings.conn_timeout,
        retry=settings.retry,
        retry_on_error=settings.retry_on_error,
        redis_class=ArqRedis,
        max_connections=settings.max_connections,
    )
