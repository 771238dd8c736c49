"""The client's spooler: batches Redis does not take go to disk, and are replayed in order.

A Spooler owns its spool (service/producer/spool.py), its replay task and its counters; it
knows the client only through the two functions it is given: `enqueue` (send one batch's
payload under a task id) and `fail` (report events that could not be kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeAlias

from service.events import AuditEvent
from service.producer.failures import ClientClosed, SpoolFull
from service.producer.spool import Spool, SpoolError, SpoolRefused, replay_batches
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
# Send one batch's payload (a JSON array) as a job with this task id; raise when not taken.
Enqueue: TypeAlias = Callable[[bytes, str], Awaitable[None]]
# Report the items of a batch as failed with this error (each one logged or answered).
Fail: TypeAlias = Callable[[Iterable[Item], Exception], None]


class Spooler:
    """Append batches to a spool while Redis does not take them, and replay them into Redis,
    in order, once it answers; look for segments that other processes left."""

    def __init__(
        self,
        spool: Spool,
        *,
        enqueue: Enqueue,
        fail: Fail,
        probe: Callable[[], Awaitable[Any]],
        timeout_s: float,
        extra_keys: frozenset[str] = frozenset(),
    ) -> None:
        """`probe` asks Redis whether it answers (PING); `timeout_s` bounds it and each
        replayed batch; `extra_keys` redact what the spooler logs."""
        self.spool = spool
        self.spooled = 0  # events Redis did not take, appended to the spool
        self.replayed = 0  # events replayed from the spool into Redis
        self.spooling = False  # batches go to the spool (Redis failed, or the spool holds some)
        self._enqueue = enqueue
        self._fail = fail
        self._probe = probe
        self._timeout = timeout_s
        self._extra_keys = extra_keys
        self._stopped = False
        self._broken = False  # the spool could not be written: said once
        self._replayer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # spooling started: the replayer probes Redis
        # Cleared while the last replay pass runs; set once the replayer looked for earlier
        # segments.
        self._unheld = asyncio.Event()
        self._appending = 0  # batches being appended to the spool
        self._append_idle = asyncio.Event()
        self._append_idle.set()

    async def unheld(self) -> None:
        """Wait while the last replay pass holds new batches back (spooled events go first)."""
        await self._unheld.wait()

    async def append(self, batch: list[Item]) -> None:
        """Append a batch Redis did not take to the spool; its events count as sent."""
        spool = self.spool
        self._appending += 1
        self._append_idle.clear()
        try:
            written = await asyncio.to_thread(spool.append, [item[0] for item in batch])
        except asyncio.CancelledError:
            self._fail(batch, ClientClosed("closed while the batch was being spooled"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, SpoolError) else SpoolError(str(exc))
            self._report_broken(error)
            self._fail(batch, error)
            return
        finally:
            self._appending -= 1
            if not self._appending:
                self._append_idle.set()
        if self._broken and written:
            self._broken = False
            logger.warning("the spool at %s is written again", spool.directory)
        self.spooled += written
        for _, _, sent in batch[:written]:
            if sent is not None and not sent.done():
                sent.set_result(None)
        if written < len(batch):
            full = SpoolFull(
                f"the spool at {spool.directory} holds {spool.max_bytes} bytes, its limit"
            )
            self._fail(batch[written:], full)

    def start(self, cause: BaseException | None = None) -> None:
        """Send batches to the spool from now on, until it is replayed (`cause`: why)."""
        if not self.spooling:
            self.spooling = True
            if cause is not None:
                logger.warning(
                    "Redis does not take events (%s: %s): spooling them until it does",
                    type(cause).__name__,
                    redact_sensitive_in_string(str(cause), self._extra_keys),
                )
        self.ensure_replayer()
        self._wake.set()

    def ensure_replayer(self) -> None:
        """Run the replay task on the running loop, unless it runs or the spooler stopped."""
        if self._stopped:
            return
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.get_running_loop().create_task(
                self._run_replayer(), name="auditq-replayer", context=contextvars.Context()
            )
            self._replayer.add_done_callback(_log_replayer_death)

    def stop(self) -> None:
        """Start no replay pass from now on (the client is closing); `append` still works."""
        self._stopped = True

    async def aclose(self) -> None:
        """Stop replaying and close the spool; what is still spooled stays for the next
        client on the spool."""
        self._stopped = True
        replayer = self._replayer
        here = asyncio.get_running_loop()
        if replayer is not None and not replayer.done() and replayer.get_loop() is here:
            replayer.cancel()
            await asyncio.wait({replayer})
        self.spool.close()

    def _report_broken(self, error: BaseException) -> None:
        """Say once (until it works again) that the spool cannot be used."""
        if not self._broken:
            self._broken = True
            logger.error(
                "the spool cannot be written (%s): events Redis does not take are lost, "
                "each logged as a failure, until it can",
                redact_sensitive_in_string(str(error), self._extra_keys),
            )

    async def _run_replayer(self) -> None:
        """Probe Redis while spooling and replay the spool into it; look for leftovers."""
        spool = self.spool
        try:
            await asyncio.to_thread(spool.sweep_staging)
            if await asyncio.to_thread(spool.has_segments):
                self.start()  # an earlier process left events: they go first
        except SpoolError as exc:
            self._report_broken(exc)
        finally:
            self._unheld.set()
        pause = REPLAY_FIRST_PAUSE
        while not self._stopped:
            if not self.spooling:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SPOOL_SCAN_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                if not self.spooling:
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
                self._report_broken(exc)
                self.spooling = False
            except Exception as exc:
                logger.debug("spool replay waits: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, REPLAY_MAX_PAUSE)

    async def _replay_last(self) -> None:
        """Replay what is left with new batches held back, then send directly again."""
        spool = self.spool
        self._unheld.clear()
        try:
            await self._append_idle.wait()
            await asyncio.to_thread(spool.rotate)
            await self._replay_closed()
            if not spool.current_bytes and not self._appending:
                self.spooling = False
                logger.warning("the spool is replayed: events go to Redis directly again")
        finally:
            self._unheld.set()

    async def _replay_leftovers(self) -> None:
        """Replay segments other processes left, if any and if Redis answers."""
        try:
            if await asyncio.to_thread(self.spool.closed_segments) and await self._redis_answers():
                await self._replay_closed()
        except Exception as exc:
            logger.debug("spool leftovers wait: %s: %s", type(exc).__name__, exc)

    async def _replay_closed(self) -> None:
        """Enqueue every closed segment this process can lock, deleting each once acknowledged."""
        spool = self.spool
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
                    async with asyncio.timeout(self._timeout):
                        await self._enqueue(batch.payload, batch.task_id)
                    self.replayed += batch.count
                await asyncio.to_thread(segment.delete)
            finally:
                segment.release()
        await asyncio.to_thread(spool.refresh)  # other processes add and replay segments too

    async def _redis_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe()
        except Exception:
            return False
        return True


def trusted_spool(directory: Path, max_bytes: int) -> Spool | None:
    """The spool in `directory`, or None (said in one line) when others could write there:
    the client then works as without a spool. A directory not made yet is made 0700 later."""
    spool = Spool(directory, max_bytes=max_bytes)
    try:
        spool.check_directory()
    except SpoolRefused as exc:
        logger.error("%s; the audit client works without a spool", exc)
        return None
    except SpoolError:
        pass  # not usable yet: said once when a batch needs it
    return spool


def _release_claim(claim: asyncio.Future[Any]) -> None:
    if not claim.cancelled() and claim.exception() is None and claim.result() is not None:
        claim.result().release()


def _log_replayer_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # Restarted on the next event; said here so a bug is not silent.
        logger.error("the audit spool replayer stopped: %s: %s", type(exc).__name__, exc)
