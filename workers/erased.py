"""Erased subjects as the worker sees them: their later events are stored pseudonymised.

The list lives in PostgreSQL (pseudonyms only); Redis holds a version token that changes
with each erasure. Each job reads the token first (one GET) and reloads the list when it
changed, so a job started after an erasure was registered never stores the subject's values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from service.events import AuditEvent
from service.mentions import MentionIndex
from service.pseudonyms import (
    DocumentScrubber,
    clear_mentions,
    mention_scrubber,
    pseudonym,
    pseudonymise_event,
)
from service.queue.jobs import RAW_BYTES_PREFIX, clear_raw_bytes
from service.queue.keys import erased_version_key
from service.store import subjects as sql
from service.subject_key import load_subject_key

_UNREAD = object()


class ErasedSubjects:
    """The subject key and the pseudonyms of erased subjects, reloaded when they change."""

    def __init__(self, entity_types: frozenset[str], key_path: Path) -> None:
        self.entity_types = entity_types
        self.key_path = key_path
        self.key = b""
        self.pseudonyms: frozenset[str] = frozenset()
        self.mentions = MentionIndex(b"", ())
        self._version: Any = _UNREAD

    async def refresh(self, redis: aioredis.Redis, pool: asyncpg.Pool, queue: str) -> None:
        """Reload the list if an erasure was registered since the last look."""
        version = await redis.get(erased_version_key(queue))
        if version == self._version:  # None too: no erasure since Redis began
            return
        async with pool.acquire() as conn:
            pseudonyms = await sql.erased(conn)
            found = await sql.mentions(conn) if pseudonyms else []
        if pseudonyms and not self.key:  # a file, never in the database
            self.key = load_subject_key(self.key_path)
        self.pseudonyms = pseudonyms
        self.mentions = MentionIndex(self.key, found)
        self._version = version

    def apply(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """The events with every erased subject pseudonymised."""
        if not self.pseudonyms:
            return list(events)
        key, erased = self.key, self.pseudonyms

        @functools.lru_cache(maxsize=1024)
        def subject_of(subject_id: str) -> str | None:
            name = pseudonym(key, subject_id)
            return name if name in erased else None

        done = [
            pseudonymise_event(e, subject_of=subject_of, entity_types=self.entity_types)
            for e in events
        ]
        if self.mentions:  # other people's texts too: the id, names and emails anywhere
            done = [clear_mentions(e, self.mentions) for e in done]
        return done

    def mentioned_in(self, text: str) -> bool:
        """Tell whether the text (JSON without escapes) holds an erased subject's id, name or
        email, or a value too common to clear elsewhere (a field naming a person may)."""
        return bool(self.mentions.find(text)) or self.mentions.person_in(text)

    def clear_text(self, text: str) -> str:
        """The text cleared of every erased subject's id, names and emails."""
        scrub = mention_scrubber(self.mentions.find(text))
        return text if scrub is None else scrub.text(text)

    def touches(self, events: Sequence[Any]) -> bool:
        """Tell whether any event (with `actor` and `entity` as read: `id`, `type`) is an
        erased subject's, as `apply` would find it."""
        if not self.pseudonyms:
            return False
        key, erased, types = self.key, self.pseudonyms, self.entity_types
        seen: set[str] = set()
        for e in events:
            actor, entity = e.actor, e.entity
            ids = [actor.id] if actor is not None else []
            if entity is not None and entity.type in types:
                ids.append(entity.id)
            for subject_id in ids:
                if subject_id not in seen:
                    if pseudonym(key, subject_id) in erased:
                        return True
                    seen.add(subject_id)
        return False

    def clear_letter(self, payload: Any) -> Any:
        """A dead letter's payload (raw text, an item or a list of them), cleared."""
        if not self.pseudonyms:
            return payload
        if isinstance(payload, str) and payload.startswith(RAW_BYTES_PREFIX):
            return clear_raw_bytes(payload, self.clear_text)  # not UTF-8: its bytes
        if isinstance(payload, str):
            return self.clear_text(payload)
        if isinstance(payload, list):
            return [self.clear_document(item) for item in payload]
        return self.clear_document(payload)

    def clear_document(self, document: Any) -> Any:
        """An item that is not a valid event (for the dead letter), cleared of erased subjects:
        an erased subject's own item pseudonymised, then any id, name or email anywhere."""
        document = self._clear_own(document)
        if self.mentions:
            found: dict[str, str | None] = {}
            self.mentions.find_in(document, found)
            scrub = mention_scrubber(found)
            if scrub is not None:
                document = scrub.json(document)
        return document

    def _clear_own(self, document: Any) -> Any:
        if not self.pseudonyms or not isinstance(document, dict):
            return document
        candidates = [
            part.get("id")
            for name, part in (("actor", document.get("actor")), ("entity", document.get("entity")))
            if isinstance(part, dict) and (name == "actor" or part.get("type") in self.entity_types)
        ]
        for subject_id in candidates:
            if not isinstance(subject_id, str):
                continue
            name = pseudonym(self.key, subject_id)
            if name in self.pseudonyms:
                scrubber = DocumentScrubber(subject_id, name, self.entity_types, [subject_id])
                scrubber.learn(document)
                document = scrubber.scrub(document)
        return document
