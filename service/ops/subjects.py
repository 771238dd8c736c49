"""Erasure of one data subject everywhere auditq keeps data (contract §9, docs/erasure.md).

The procedure, shared by the API and `auditq anonymise`:

1. derive the pseudonym from the subject key (a file, never in the database), register it as
   erased (PostgreSQL), then change the list's version in Redis: every job a worker starts
   from then on stores the subject's events pseudonymised;
2. wait for the jobs that were already running (they may not have seen the list);
3. gather the subject's values (id, names, emails, client addresses) from its rows and from
   what Redis holds of it (queued jobs, arq results, dead letters), and rewrite those Redis
   documents cleared of the subject;
4. in PostgreSQL, step by step (each its own short transaction, so writes go on), through
   the one definer function `auditq_erase_subject`: it finds the subject's rows and values
   itself, changes the other rows that mention them, then the subject's own, each batch a
   sealed store action, and records the state and the subject.anonymised event itself. A
   crash leaves the state running: asking again resumes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec
import redis.asyncio as aioredis

from service import mentions
from service.errors import AuditqError
from service.own_events import system_by
from service.pseudonyms import (
    MAX_SUBJECT_ID,
    PSEUDONYM_PATTERN,
    DocumentScrubber,
    Scrubber,
    pseudonym,
)
from service.queue import dead_letter
from service.queue.jobs import deserialize_job
from service.queue.keys import IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, erased_version_key
from service.settings import Settings
from service.store import subjects as sql
from service.store.db import Conn
from service.subject_key import load_or_create_subject_key

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


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """One erasure asked: by pseudonym (never the id), when, and what it changed."""

    pseudonym: str
    state: Literal["running", "done"]
    requested_at: datetime
    finished_at: datetime | None
    rows: int
    dead_letters: int


class Erasures(msgspec.Struct, frozen=True, kw_only=True):
    """Erasures, the latest asked first."""

    items: list[Erasure]


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


def pseudonym_of(settings: Settings, subject_id: str) -> str:
    """The subject's pseudonym, from the subject key file (made when absent)."""
    key = load_or_create_subject_key(settings.subject_key_path)
    return pseudonym(key, check_subject_id(subject_id))


async def state(conn: Conn, settings: Settings, subject_id: str) -> Anonymisation | None:
    """The state of the subject's erasure, or None if it was never asked."""
    row = await conn.fetchrow(sql.STATE, pseudonym_of(settings, subject_id))
    return None if row is None else msgspec.convert(dict(row), Anonymisation)


async def erasures(conn: Conn, limit: int) -> Erasures:
    """The `limit` erasures asked last, newest first."""
    rows = await conn.fetch(sql.LIST, limit)
    return Erasures(items=[msgspec.convert(dict(r), Erasure) for r in rows])


async def register(conn: Conn, redis: aioredis.Redis, queue: str, name: str) -> None:
    """Mark the pseudonym erased, then tell the workers (their next job reloads the list)."""
    await conn.fetchval(sql.REGISTER, name)
    await redis.set(erased_version_key(queue), uuid.uuid4().hex)


async def anonymise(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    settings: Settings,
    subject_id: str,
    *,
    reason: str | None = None,
    wait: bool = True,
    by: dict[str, Any] | None = None,
) -> Outcome | None:
    """Erase the subject (`by`: who asked, for its subject.anonymised event); None when
    another run holds it and `wait` is false."""
    name = pseudonym_of(settings, subject_id)
    async with pool.acquire() as conn:
        await register(conn, redis, settings.queue, name)
        if not await conn.fetchval(sql.TRY_LOCK, name):
            if not wait:
                return None
            await conn.fetchval(sql.LOCK, name)
        try:
            run = _Run(conn, redis, settings, subject_id, name)
            return await run.run(reason, by or system_by())
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

    async def run(self, reason: str | None, by: dict[str, Any]) -> Outcome:
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
        # Other people's documents keep client addresses and values too common to clear
        # everywhere (the store's rule, docs/erasure.md); the subject's own lose them all.
        uncommon = {r["v"] for r in await self.conn.fetch(sql.UNCOMMON, list(values))}
        own_only = {v for v in values if v not in uncommon or _is_address(v)}
        documents = DocumentScrubber(
            self.subject_id, self.name, self.settings.subject_entity_types, values, own_only
        )
        rewritten, letters = await self._scrub_redis(documents)
        # Other people's later events are cleared of the id, names and emails by the
        # workers, from keyed digests; jobs already running are waited for once more.
        await self._register_mentions(values)
        await self._wait_for_running_jobs()
        actions: list[int] = []
        done = False
        while not done:  # the store finds the rows and values itself (schema.sql)
            _changed, done, action = await sql.erase_step(
                self.conn,
                subject_id=self.subject_id,
                pseudonym=self.name,
                reason=reason,
                dead_letters=letters,
                by=by,
                limit=BATCH_ROWS,
                entity_types=self.types,
            )
            letters = 0  # counted once
            if action is not None:
                actions.append(action)
        done_row = await self.conn.fetchrow(sql.STATE, self.name)
        assert done_row is not None
        logger.info(
            "subject %s anonymised: %d rows, %d Redis documents (%d dead letters) in %.1f s",
            self.name,
            done_row["rows"],
            rewritten,
            done_row["dead_letters"],
            time.perf_counter() - started,
        )
        if reason is not None:
            reason = Scrubber({self.subject_id: self.name}, values).text(reason)
        return Outcome(
            pseudonym=self.name,
            rows=int(done_row["rows"]),
            dead_letters=int(done_row["dead_letters"]),
            redis_documents=rewritten,
            actions=actions,
            reason=reason,
        )

    async def _register_mentions(self, values: set[str]) -> None:
        """Give the workers the digests of the values to clear from later events: those to
        clear anywhere, and those too common for that (only where a field naming a person
        holds one whole); client addresses neither."""
        named = [v for v in values if not _is_address(v)]
        uncommon = {r["v"] for r in await self.conn.fetch(sql.UNCOMMON, named)}
        key = load_or_create_subject_key(self.settings.subject_key_path)
        entries: dict[bytes, tuple[bytes, bytes, int, bool, bool]] = {}
        for value in named:
            if value in uncommon:
                made = mentions.entry(key, value)
                if made is None:
                    continue
                person_only = False
            else:
                whole = mentions.digest(key, value)
                made, person_only = (whole, whole, 1), True
            was = entries.get(made[0])
            is_id = value == self.subject_id or (was is not None and was[3])
            entries[made[0]] = (*made, is_id, person_only and (was is None or was[4]))
        if entries:
            rows = list(entries.values())
            await self.conn.fetchval(
                sql.REGISTER_MENTIONS,
                self.name,
                *([r[i] for r in rows] for i in range(5)),
            )
        await self.redis.set(erased_version_key(self.settings.queue), uuid.uuid4().hex)

    async def _wait_for_running_jobs(self) -> None:
        """Wait until every job of the queue that was running has ended (or its time is up)."""
        queue = self.settings.queue
        running: list[tuple[bytes, bytes]] = []
        async for key in self.redis.scan_iter(match=IN_PROGRESS_PREFIX + "*", count=SCAN_COUNT):
            job_id = key[len(IN_PROGRESS_PREFIX) :]
            if await self.redis.zscore(queue, job_id) is not None:
                running.append((key, JOB_PREFIX.encode() + job_id))
        deadline = time.monotonic() + self.settings.job_timeout_s + IN_PROGRESS_EXTRA_S
        # A job runs while both its in-progress marker and the job itself exist: arq keeps a
        # cron job's marker after it finished (so it does not run twice), the job it deletes.
        while running and await self._any_running(running):
            if time.monotonic() > deadline:
                logger.warning("erasure: jobs still running after their timeout; going on")
                return
            await asyncio.sleep(RUNNING_JOBS_POLL_S)

    async def _any_running(self, jobs: list[tuple[bytes, bytes]]) -> bool:
        for marker, job in jobs:
            if await self.redis.exists(marker) and await self.redis.exists(job):
                return True
        return False

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
                document = None if raw is None else _read(raw)
                if document is not None:  # else gone, or not auditq's JSON: nothing of ours
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
                document = None if raw is None else _read(raw)
                if document is None:
                    break
        return rewritten, letters


def _read(raw: bytes) -> Any:
    """A Redis document, or None when it is not auditq's JSON. A job with bytes that are not
    UTF-8 is read as the worker reads it, those segments base64-encoded: they are cleared as
    the bytes they are, and the job, written back so, is read by the worker the same way."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    except UnicodeDecodeError:
        pass
    try:
        return deserialize_job(raw)
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_reason(reason: str | None) -> str | None:
    """The admin's reason, or InvalidSubject when it cannot be kept in an event."""
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidSubject(f"a reason is at most {MAX_REASON} characters")
    if reason is not None and "\x00" in reason:
        raise InvalidSubject("a reason holds no NUL character")
    return reason or None
