"""arq's Redis for the worker: its settings from AUDITQ_REDIS_URL (Sentinel too), its pool."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.exceptions import RedisError

from service.connections import RedisTarget, parse_redis_url, redis_client


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
    """arq's pool for `settings`; for Sentinel with the timeouts and retry policy arq drops."""
    if not settings.sentinel:
        return await create_pool(
            settings,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=default_queue_name,
            expires_extra_ms=expires_extra_ms,
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
    attempt = 0
    while True:
        pool = redis_client(
            target,
            connect_timeout=settings.conn_timeout,
            retry=settings.retry,
            retry_on_error=settings.retry_on_error,
            redis_class=ArqRedis,
            max_connections=settings.max_connections,
        )
        pool.job_serializer = job_serializer
        pool.job_deserializer = job_deserializer
        pool.default_queue_name = default_queue_name
        pool.expires_extra_ms = expires_extra_ms
        try:
            await pool.ping()
        except (RedisError, OSError, TimeoutError):
            await pool.aclose()
            if attempt >= settings.conn_retries:
                raise
            attempt += 1
            await asyncio.sleep(settings.conn_retry_delay)
            continue
        return pool
