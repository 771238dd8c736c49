"""Send each new checkpoint to the witnesses of AUDITQ_WITNESS_URLS; keep their cosignatures.

C2SP tlog-witness: `old N`, the consistency proof from N, then the checkpoint; a 409 tells
the size the witness last cosigned, and the request is made again from there once.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import aiohttp
import asyncpg

from service.integrity import note
from service.store import tlog
from service.store.db import Conn

logger = logging.getLogger(__name__)

TIMEOUT_S = 10.0  # seconds a witness may take to answer


async def _post(
    session: aiohttp.ClientSession, url: str, old: int, proof: list[bytes], signed: str
) -> tuple[int, str]:
    body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    body += "\n" + signed
    endpoint = url.rstrip("/") + "/add-checkpoint"
    async with session.post(endpoint, data=body.encode()) as response:
        return response.status, await response.text()


async def send(pool: asyncpg.Pool, urls: tuple[str, ...], signed: str) -> None:
    """Ask every witness, concurrently, to cosign `signed`; store what they answer (never
    raises; each witness is bounded by TIMEOUT_S)."""
    if not urls:
        return
    checkpoint = note.parse(signed)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(_ask(pool, session, url, checkpoint, signed) for url in urls))


async def _ask(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    url: str,
    checkpoint: note.Checkpoint,
    signed: str,
) -> None:
    try:
        async with pool.acquire() as conn:
            try:
                error = await _cosign(conn, session, url, checkpoint, signed)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"unreachable: {type(exc).__name__}: {exc}"
            if error is not None:
                logger.warning("witness %s did not cosign size %d: %s", url, checkpoint.size, error)
                await tlog.record_witness(conn, url, cosigned_size=None, error=error)
    except Exception as exc:  # the database away: the next checkpoint asks again
        logger.warning("witness %s: %s: %s", url, type(exc).__name__, exc)


async def _cosign(
    conn: Conn,
    session: aiohttp.ClientSession,
    url: str,
    checkpoint: note.Checkpoint,
    signed: str,
) -> str | None:
    """One witness: the error, or None once its cosignature is stored."""
    old = await tlog.last_cosigned(conn, url)
    tree = tlog.Tree(conn)
    for _attempt in range(2):
        proof = await tree.consistency_proof(old, checkpoint.size) if old else []
        status, text = await _post(session, url, old, proof, signed)
        if status == 409 and text.strip().isdigit() and int(text) != old:
            if int(text) > checkpoint.size:
                return f"the witness holds size {int(text)}, beyond this log's {checkpoint.size}"
            old = int(text)
            continue
        if status != 200:
            return f"HTTP {status}: {text.strip()[:200]}"
        lines = [line + "\n" for line in text.splitlines() if line.startswith(note.DASH + " ")]
        if not lines:
            return "HTTP 200 without a cosignature line"
        for line in lines:
            witness_name = line[2:].rsplit(" ", 1)[0]
            await tlog.record_cosignature(conn, checkpoint.size, witness_name, line)
        await tlog.record_witness(conn, url, cosigned_size=checkpoint.size, error=None)
        return None
    return f"HTTP 409: the witness's size kept changing (last {old})"
