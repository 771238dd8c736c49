"""The sealer: every seal interval, one signed checkpoint over every row stored since the last.

Each worker runs one; an advisory lock lets only one of them seal at a time, so the chain
never forks. docs/integrity.md, "Sealing", has the design.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.sealstate import SealingStopped
from service.store import tlog
from service.store.seals import LogConfig, seal_once
from workers import witnesses

# Why sealing stopped, while it is stopped (the API reads it from tlog_seal_stop).
STOPPED: dict[str, str] = {}

logger = logging.getLogger(__name__)


async def run(
    pool: asyncpg.Pool,
    key: Ed25519PrivateKey,
    *,
    interval_s: float,
    log: LogConfig | None = None,
    witness_urls: tuple[str, ...] = (),
) -> None:
    """Seal what is pending every `interval_s` until cancelled; a failure waits for the next.

    A store whose log does not extend the last checkpoint signed stops sealing: it is said
    in the log and in the store (once per reason), and nothing is signed until an operator
    acts (docs/integrity.md, "When sealing stops")."""
    # Half the interval between attempts: a row waits at most about one interval.
    pause = interval_s / 2
    # Witnesses are asked off the seal path: one round at a time, each witness bounded by
    # its timeout; a checkpoint signed meanwhile goes in the next round (the latest only:
    # a witness checks it against the size it last cosigned).
    asking: asyncio.Task[None] | None = None
    latest = sent = None
    try:
        while True:
            try:
                async with pool.acquire() as conn:
                    sealed = await seal_once(conn, key, log)
                if sealed is not None:  # signed: an operator resolved what stopped it
                    STOPPED.clear()
                    if log is not None and witness_urls:
                        latest = await asyncio.to_thread(log.state_path.read_text, encoding="utf-8")
                    logger.debug(
                        "sealed %d rows, %d actions", sealed.row_count, sealed.action_count
                    )
            except SealingStopped as exc:
                if STOPPED.get("reason") != str(exc):  # said once per reason, kept for the API
                    logger.error("sealing stopped: %s", exc)
                    async with pool.acquire() as conn:
                        await tlog.record_stop(conn, str(exc))
                STOPPED["reason"] = str(exc)
            except Exception as exc:  # the database away: the next round seals what waited
                logger.warning("sealing failed: %s: %s", type(exc).__name__, exc)
            if latest is not None and latest != sent and (asking is None or asking.done()):
                sent = latest
                asking = asyncio.create_task(witnesses.send(pool, witness_urls, latest))
            await asyncio.sleep(pause)
    finally:
        if asking is not None:
            asking.cancel()
