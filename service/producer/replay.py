"""The client's spool half: batches Redis does not take go to disk, and are replayed in order."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterable
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from service.events import AuditEvent
from service.producer.failures import ClientClosed, SpoolFull
from service.producer.spool import Spool, SpoolError, replay_batches
from service.redaction import redact_sensitive_in_string

logger = logging.getLogger("service.producer.client")

BATCH_MAX_BYTES = 4 * 1024 * 1024  # bytes of event JSON per job; a lone bigger event still goes
REPLAY_FIRST_PAUSE = 0.2  # seconds between probes of a Redis that does not answer, growing to
REPLAY_MAX_PAUSE = 2.0  # seconds
SPOOL_SCAN_INTERVAL = 10.0  # seconds between looks for segments that other processes left
# Below this many bytes still spooled, the last replay pass holds new batches back for its
# few milliseconds, so that no event overtakes a spooled one when sending goes direct again.
FINAL_PASS_MAX_BYTES = 1024 * 1024

# (event JSON, finalized event, the awaiting capture's future or None for capture_nowait)
Item: TypeAlias = tuple[bytes, AuditEvent, asyncio.Future[None] | None]


class SpoolReplay:
    """The spool part of AuditClient (which inherits it): append, replay, report.

    Kept apart from the sending half so each reads on its own; it works on the client's
    state, declared here.
    """

    spooled: int
    replayed: int
    _redis: Redis
    _script: AsyncScript
    _queue: str
    _send_timeout: float
    _flush_max: int
    _extra_keys: frozenset[str]
    _lock: threading.Lock
    _closing: bool
    _spool: Spool | None
    _spooling: bool
    _spool_broken: bool
    _replayer: asyncio.Task[None] | None
    _wake: asyncio.Event
    _unheld: asyncio.Event
    _appending: int
    _append_idle: asyncio.Event

    def _fail_batch(self, batch: Iterable[Item], exc: Exception) -> None:
        raise NotImplementedError

    def _job_args(self, payload: bytes, task_id: str = "") -> list[bytes | str]:
        raise NotImplementedError

    async def _enqueue(self, args: list[bytes | str], *, within_s: float) -> None:
        raise NotImplementedError

    async def _spool_batch(self, batch: list[Item]) -> None:
        """Append a batch Redis did not take to the spool; its events count as sent."""
        spool = self._spool
        assert spool is not None
        self._appending += 1
        self._append_idle.clear()
        try:
            written = await asyncio.to_thread(spool.append, [item[0] for item in batch])
        except asyncio.CancelledError:
            self._fail_batch(batch, ClientClosed("closed while the batch was being spooled"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, SpoolError) else SpoolError(str(exc))
            self._report_spool_broken(error)
            self._fail_batch(batch, error)
            return
        finally:
            self._appending -= 1
            if not self._appending:
                self._append_idle.set()
        if self._spool_broken and written:
            self._spool_broken = False
            logger.warning("the spool at %s is written again", spool.directory)
        with self._lock:
            self.spooled += written
        for _, _, sent in batch[:written]:
            if sent is not None and not sent.done():
                sent.set_result(None)
        if written < len(batch):
            full = SpoolFull(
                f"the spool at {spool.directory} holds {spool.max_bytes} bytes, its limit"
            )
            self._fail_batch(batch[written:], full)

    def _report_spool_broken(self, error: BaseException) -> None:
        """Say once (until it works again) that the spool cannot be used."""
        if not self._spool_broken:
            self._spool_broken = True
            logger.error(
                "the spool cannot be written (%s): events Redis does not take are lost, "
                "each logged as a failure, until it can",
                redact_sensitive_in_string(str(error), self._extra_keys),
            )

    def _start_spooling(self, cause: BaseException | None = None) -> None:
        if not self._spooling:
            self._spooling = True
            if cause is not None:
                logger.warning(
                    "Redis does not take events (%s: %s): spooling them until it does",
                    type(cause).__name__,
                    redact_sensitive_in_string(str(cause), self._extra_keys),
                )
        self._ensure_replayer()
        self._wake.set()

    def _ensure_replayer(self) -> None:
        if self._closing:
            return
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.get_running_loop().create_task(
                self._run_replayer(), name="auditq-replayer", context=contextvars.Context()
            )
            self._replayer.add_done_callback(_log_replayer_death)

    async def _run_replayer(self) -> None:
        """Probe Redis while spooling and replay the spool into it; look for leftovers."""
        spool = self._spool
        assert spool is not None
        try:
            await asyncio.to_thread(spool.sweep_staging)
            if await asyncio.to_thread(spool.has_segments):
                self._start_spooling()  # an earlier process left events: they go first
        except SpoolError as exc:
            self._report_spool_broken(exc)
        finally:
            self._unheld.set()
        pause = REPLAY_FIRST_PAUSE
        while not self._closing:
            if not self._spooling:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SPOOL_SCAN_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                if not self._spooling:
                    await self._replay_leftovers()
                    continue
            try:
                if not await self._redis_answers():
                    raise TimeoutError("Redis does not answer")
                await asyncio.to_thread(spool.rotate)
                await self._replay_closed()
                if spool.current_bytes <= FINAL_PASS_MAX_BYTES:
                    await self._replay_last()
                pause = REPLAY_FIRST_PAUSE
            except SpoolError as exc:
                # Nothing can be read back from a spool that cannot be used, and Redis
                # answers: send directly again rather than fail every event.
                self._report_spool_broken(exc)
                self._spooling = False
            except Exception as exc:
                logger.debug("spool replay waits: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, REPLAY_MAX_PAUSE)

    async def _replay_last(self) -> None:
        """Replay what is left with new batches held back, then send directly again."""
        spool = self._spool
        assert spool is not None
        self._unheld.clear()
        try:
            await self._append_idle.wait()
            await asyncio.to_thread(spool.rotate)
            await self._replay_closed()
            if not spool.current_bytes and not self._appending:
                self._spooling = False
                logger.warning("the spool is replayed: events go to Redis directly again")
        finally:
            self._unheld.set()

    async def _replay_leftovers(self) -> None:
        """Replay segments other processes left, if any and if Redis answers."""
        spool = self._spool
        assert spool is not None
        try:
            if await asyncio.to_thread(spool.closed_segments) and await self._redis_answers():
                await self._replay_closed()
        except Exception as exc:
            logger.debug("spool leftovers wait: %s: %s", type(exc).__name__, exc)

    async def _replay_closed(self) -> None:
        """Enqueue every closed segment this process can lock, deleting each once acknowledged."""
        spool = self._spool
        assert spool is not None
        for path in await asyncio.to_thread(spool.closed_segments):
            claim = asyncio.ensure_future(asyncio.to_thread(spool.claim, path))
            try:
                segment = await asyncio.shield(claim)
            except asyncio.CancelledError:
                claim.add_done_callback(_release_claim)  # never keep a segment locked
                raise
            if segment is None:
                continue  # another process writes or replays it
            try:
                # Task ids name the lines of each batch: a batch replayed twice is queued once.
                for batch in replay_batches(segment.name, segment.lines, max_bytes=BATCH_MAX_BYTES):
                    args = self._job_args(batch.payload, batch.task_id)
                    async with asyncio.timeout(self._send_timeout):
                        await self._enqueue(args, within_s=self._send_timeout)
                    with self._lock:
                        self.replayed += batch.count
                await asyncio.to_thread(segment.delete)
            finally:
                segment.release()
        await asyncio.to_thread(spool.refresh)  # other processes add and replay segments too

    async def _redis_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._redis.ping()
        except Exception:
            return False
        return True


def _release_claim(claim: asyncio.Future[Any]) -> None:
    if not claim.cancelled() and claim.exception() is None and claim.result() is not None:
        claim.result().release()


def _log_replayer_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # Restarted on the next event; said here so a bug is not silent.
        logger.error("the audit spool replayer stopped: %s: %s", type(exc).__name__, exc)
