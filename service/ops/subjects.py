"""Erasure of one data subject everywhere auditq keeps data (contract §9, docs/erasure.md).

The procedure, shared by the API and `auditq anonymise`:

1. register the pseudonym as erased (PostgreSQL), then change the list's version in Redis:
   every job a worker starts from then on stores the subject's events pseudonymised;
2. wait for the jobs that were already running (they may not have seen the list);
3. gather the subject's values (id, names, emails, client addresses) from its rows and from
   what Redis holds of it (queued jobs, arq results, dead letters);
4. rewrite those Redis documents cleared of the subject;
5. in PostgreSQL, batch by batch (each its own short transaction through the definer
   function, so writes go on): first the other rows that mention a value (full-text index),
   then the subject's own rows. A crash leaves the remaining rows matching: asking again
   resumes. Every batch is a sealed admin action, so `auditq verify` still passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import msgspec
import redis.asyncio as aioredis

from service.errors import AuditqError
from service.events import Actor, AuditEvent, Entity, RequestInfo
from service.keys import IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, erased_version_key
from service.ops import dead_letter
from service.pseudonyms import (
    MAX_SUBJECT_ID,
    PSEUDONYM_PATTERN,
    DocumentScrubber,
    Scrubber,
    pseudonym,
)
from service.settings import Settings
from service.store import subjects as sql
from service.store.db import Conn

logger = logging.getLogger(__name__)

BATCH_ROWS = 1000  # rows per transaction: short enough that no write waits on one
MAX_VALUES = 1000  # distinct names, emails and addresses of one subject looked for
SCAN_COUNT = 500  # keys per Redis SCAN round trip
RUNNING_JOBS_POLL_S = 0.05  # seconds between looks at the jobs that were running
IN_PROGRESS_EXTRA_S = 10.0  # arq keeps a job's in-progress marker this long past its timeout
MAX_REASON = 1024  # characters

# Rewrite a Redis document only if it is still what was read (a worker may finish it meanwhile).
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class InvalidSubject(AuditqError):
    """A subject id that cannot be erased (empty, too long, or a pseudonym already)."""


class Anonymisation(msgspec.Struct, frozen=True, kw_only=True):
    """Where the erasure of one subject stands (GET …/anonymisation)."""

    state: Literal["running", "done"]
    pseudonym: str
    rows: int
    dead_letters: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one run changed; `reason` is the admin's, cleared of the subject's values."""

    pseudonym: str
    rows: int
    dead_letters: int
    redis_documents: int
    actions: list[int]  # the store actions (`auditq verify` names them) of this run's batches
    reason: str | None


def check_subject_id(subject_id: str) -> str:
    """The subject id, or InvalidSubject naming what is wrong with it."""
    if not subject_id.strip():
        raise InvalidSubject("a subject id is not empty")
    if len(subject_id) > MAX_SUBJECT_ID:
        raise InvalidSubject(f"a subject id is at most {MAX_SUBJECT_ID} characters")
    if "\x00" in subject_id:
        raise InvalidSubject("a subject id holds no NUL character (no stored id can)")
    if PSEUDONYM_PATTERN.match(subject_id):
        raise InvalidSubject("this is a pseudonym already: its subject is erased")
    return subject_id


async def pseudonym_of(conn: Conn, subject_id: str) -> str:
    return pseudonym(await sql.subject_key(conn), check_subject_id(subject_id))


async def state(conn: Conn, subject_id: str) -> Anonymisation | None:
    """The state of the subject's erasure, or None if it was never asked."""
    row = await conn.fetchrow(sql.STATE, await pseudonym_of(conn, subject_id))
    return None if row is None else msgspec.convert(dict(row), Anonymisation)


async def register(conn: Conn, redis: aioredis.Redis, queue: str, name: str) -> None:
    """Mark the pseudonym erased, then tell the workers (their next job reloads the list)."""
    await conn.execute(sql.REGISTER, name)
    await redis.set(erased_version_key(queue), uuid.uuid4().hex)


async def anonymise(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    settings: Settings,
    subject_id: str,
    *,
    reason: str | None = None,
    wait: bool = True,
) -> Outcome | None:
    """Erase the subject; None when another run holds it and `wait` is false."""
    async with pool.acquire() as conn:
        name = await pseudonym_of(conn, subject_id)
        await register(conn, redis, settings.queue, name)
        if not await conn.fetchval(sql.TRY_LOCK, name):
            if not wait:
                return None
            await conn.fetchval(sql.LOCK, name)
        try:
            return await _Run(conn, redis, settings, subject_id, name).run(reason)
        finally:
            await conn.fetchval(sql.UNLOCK, name)


class _Run:
    def __init__(
        self,
        conn: Conn,
        redis: aioredis.Redis,
        settings: Settings,
        subject_id: str,
        name: str,
    ) -> None:
        self.conn, self.redis, self.settings = conn, redis, settings
        self.subject_id, self.name = subject_id, name
        self.types = sorted(settings.subject_entity_types)
        self._swap = redis.register_script(_SWAP)

    async def run(self, reason: str | None) -> Outcome:
        started = time.perf_counter()
        await self._wait_for_running_jobs()
        values = {self.subject_id}
        for row in await self.conn.fetch(sql.SUBJECT_VALUES, self.subject_id, self.types):
            values.add(row["v"])
        documents = DocumentScrubber(
            self.subject_id, self.name, self.settings.subject_entity_types, values
        )
        async for _key, document, _raw in self._documents():
            documents.learn(document)
        others = sorted(documents.values - {self.subject_id}, key=lambda v: (-len(v), v))
        values = {self.subject_id, *others[:MAX_VALUES]}
        documents = DocumentScrubber(
            self.subject_id, self.name, self.settings.subject_entity_types, values
        )
        rewritten, letters = await self._scrub_redis(documents)
        await self.conn.execute(sql.ADD_COUNTS, self.name, 0, letters)
        rows, actions = 0, list[int]()
        for mentions in (True, False):
            rows += await self._rows(sorted(values), mentions=mentions, actions=actions)
        await self.conn.execute(sql.FINISH, self.name)
        logger.info(
            "subject %s anonymised: %d rows, %d Redis documents (%d dead letters) in %.1f s",
            self.name,
            rows,
            rewritten,
            letters,
            time.perf_counter() - started,
        )
        if reason is not None:
            reason = Scrubber({self.subject_id: self.name}, values).text(reason)
        return Outcome(
            pseudonym=self.name,
            rows=rows,
            dead_letters=letters,
            redis_documents=rewritten,
            actions=actions,
            reason=reason,
        )

    async def _rows(self, values: list[str], *, mentions: bool, actions: list[int]) -> int:
        total, after = 0, 0
        while True:
            changed, last, action = await sql.anonymise_rows(
                self.conn,
                subject_id=self.subject_id,
                pseudonym=self.name,
                entity_types=self.types,
                values=values,
                mentions=mentions,
                after=after,
                limit=BATCH_ROWS,
            )
            if action is not None:
                actions.append(action)
            if changed:
                total += changed
                await self.conn.execute(sql.ADD_COUNTS, self.name, changed, 0)
            if last == after:
                return total
            after = last

    async def _wait_for_running_jobs(self) -> None:
        """Wait until every job of the queue that was running has ended (or its time is up)."""
        queue = self.settings.queue
        running = []
        async for key in self.redis.scan_iter(match=IN_PROGRESS_PREFIX + "*", count=SCAN_COUNT):
            job_id = key[len(IN_PROGRESS_PREFIX) :]
            if await self.redis.zscore(queue, job_id) is not None:
                running.append(key)
        deadline = time.monotonic() + self.settings.job_timeout_s + IN_PROGRESS_EXTRA_S
        while running and await self.redis.exists(*running):
            if time.monotonic() > deadline:
                logger.warning("erasure: jobs still running after their timeout; going on")
                return
            await asyncio.sleep(RUNNING_JOBS_POLL_S)

    async def _documents(self) -> AsyncIterator[tuple[bytes, Any, bytes]]:
        """Every Redis document that can hold events: queued jobs, arq results, dead letters."""
        queue = self.settings.queue
        job_keys = (
            JOB_PREFIX.encode() + member
            async for member, _ in self.redis.zscan_iter(queue, count=SCAN_COUNT)
        )
        result_keys = self.redis.scan_iter(match=RESULT_PREFIX + "*", count=SCAN_COUNT)
        letter_keys = (
            dead_letter.record_key(queue, member.decode()).encode()
            async for member, _ in self.redis.zscan_iter(
                dead_letter.index_key(queue), count=SCAN_COUNT
            )
        )
        for keys in (job_keys, result_keys, letter_keys):
            async for key in keys:
                raw = await self.redis.get(key)
                if raw is None:
                    continue
                try:
                    document = _decoder.decode(raw)
                except (msgspec.DecodeError, RecursionError):
                    continue  # not auditq's JSON: nothing of ours
                yield key, document, raw

    async def _scrub_redis(self, documents: DocumentScrubber) -> tuple[int, int]:
        """Rewrite every document that holds the subject; (documents, of them dead letters)."""
        letters_prefix = dead_letter.record_key(self.settings.queue, "").encode()
        rewritten = letters = 0
        async for key, document, raw in self._documents():
            for _ in range(3):  # a document that changed meanwhile is read and cleared again
                cleared = documents.scrub(document)
                if cleared == document:
                    break
                if await self._swap(keys=[key], args=[raw, _encoder.encode(cleared)]):
                    rewritten += 1
                    letters += key.startswith(letters_prefix)
                    break
                raw = await self.redis.get(key)
                if raw is None:
                    break
                document = _decoder.decode(raw)
        return rewritten, letters


def anonymised_event(
    outcome: Outcome, *, actor: Actor, source: str, request: RequestInfo | None = None
) -> AuditEvent:
    """The audit event of an erasure: the pseudonym and the counts, never the subject's values."""
    metadata: dict[str, Any] = {
        "pseudonym": outcome.pseudonym,
        "rows": outcome.rows,
        "dead_letters": outcome.dead_letters,
        "redis_documents": outcome.redis_documents,
    }
    if outcome.actions:  # `auditq verify` reports each changed row with one of these
        metadata["store_actions"] = {"first": outcome.actions[0], "last": outcome.actions[-1]}
    if outcome.reason:
        metadata["reason"] = outcome.reason
    return AuditEvent(
        action="subject.anonymised",
        severity="notice",
        actor=actor,
        entity=Entity(type="subject", id=outcome.pseudonym),
        request=request,
        metadata=metadata,
        source=source,
    )


def check_reason(reason: str | None) -> str | None:
    """The admin's reason, or InvalidSubject when it cannot be kept in an event."""
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidSubject(f"a reason is at most {MAX_REASON} characters")
    if reason is not None and "\x00" in reason:
        raise InvalidSubject("a reason holds no NUL character")
    return reason or None
