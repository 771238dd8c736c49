"""Pseudonyms of data subjects, and clearing a subject's values out of events and documents.

The pseudonym is a keyed digest of the subject id (HMAC-SHA256 with the database's subject
key): stable, so a subject's history still groups, and not reversible without the key.
The text rules are those of `auditq_anonymise_rows()` in schema.sql: a value is matched
literally where it is not part of a longer word; names, emails and addresses (any case)
become ERASED, the id becomes the pseudonym. docs/erasure.md is the specification.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from service.events import AuditEvent
from service.mentions import PERSON_INNER_KEYS, PERSON_KEYS, MentionIndex
from service.queue.jobs import RAW_BYTES_PREFIX, clear_raw_bytes

PREFIX = "anon_"
PSEUDONYM_PATTERN = re.compile(r"^anon_[0-9a-f]{32}$")
ERASED = "[erased]"
MAX_SUBJECT_ID = 1024  # characters, like every id of an event


def pseudonym(key: bytes, subject_id: str) -> str:
    """The subject's pseudonym: `anon_` and 32 hex digits of HMAC-SHA256(key, id)."""
    return PREFIX + hmac.new(key, subject_id.encode(), hashlib.sha256).hexdigest()[:32]


def _alternatives(values: Iterable[str], flags: int = 0) -> re.Pattern[str] | None:
    literal = sorted({v for v in values if v}, key=lambda v: (-len(v), v))
    if not literal:
        return None
    body = "|".join(re.escape(v) for v in literal)
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", flags)


class Scrubber:
    """Clears subjects' ids (-> their pseudonyms) and names, emails, addresses out of text."""

    def __init__(self, ids: dict[str, str], others: Iterable[str]) -> None:
        self._ids = ids  # subject id -> pseudonym
        self._id_pattern = _alternatives(ids)
        self._other_pattern = _alternatives(set(others) - set(ids), re.IGNORECASE)

    @property
    def empty(self) -> bool:
        return self._id_pattern is None and self._other_pattern is None

    def text(self, value: str) -> str:
        """The text with every value of a subject cleared."""
        if self._other_pattern is not None:
            value = self._other_pattern.sub(ERASED, value)
        if self._id_pattern is not None:
            value = self._id_pattern.sub(lambda m: self._ids[m.group(0)], value)
        return value

    def json(self, value: Any) -> Any:
        """The same over every key and string of plain JSON data, at any depth."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value


def pseudonymise_event(
    event: AuditEvent, *, subject_of: Callable[[str], str | None], entity_types: frozenset[str]
) -> AuditEvent:
    """The event with its erased subjects pseudonymised (itself when it has none).

    `subject_of(id)` is the pseudonym of an erased subject with that id, else None."""
    actor, entity, request = event.actor, event.entity, event.request
    ids: dict[str, str] = {}
    others: list[str] = []
    changes: dict[str, Any] = {}
    actor_p = subject_of(actor.id) if actor is not None else None
    if actor is not None and actor_p is not None:
        ids[actor.id] = actor_p
        others += [v for v in (actor.name, actor.email) if v]
        changes["actor"] = msgspec.structs.replace(actor, id=actor_p, name=None, email=None)
    entity_p = subject_of(entity.id) if entity is not None and entity.type in entity_types else None
    if entity is not None and entity_p is not None:
        ids[entity.id] = entity_p
        others += [entity.name] if entity.name else []
        changes["entity"] = msgspec.structs.replace(entity, id=entity_p, name=None)
    if not ids:
        return event
    if request is not None:
        others += [request.ip] if request.ip else []
        changes["request"] = msgspec.structs.replace(request, ip=None, user_agent=None)
    scrub = Scrubber(ids, others)
    plain = msgspec.to_builtins(msgspec.structs.replace(event, **changes))
    for field in ("metadata", "changes", "presentation"):
        if field in plain:
            plain[field] = scrub.json(plain[field])
    if "entity" in plain and "name" in plain["entity"]:
        plain["entity"]["name"] = scrub.text(plain["entity"]["name"])
    if "request" in plain and "path" in plain["request"]:
        plain["request"]["path"] = scrub.text(plain["request"]["path"])
    return msgspec.convert(plain, AuditEvent)


class DocumentScrubber:
    """Clears one subject out of stored JSON documents (jobs, results, dead letters).

    Any object shaped like an event whose actor (or entity of a subject type) is the subject
    gets the pseudonym and loses names, emails, client IP and user agent; every string is
    then cleared of the subject's values. A string that holds JSON (a job's argument) is
    cleared inside and written back as JSON."""

    def __init__(
        self,
        subject_id: str,
        pseudonym: str,
        entity_types: frozenset[str],
        values: Iterable[str],
        own_only: Iterable[str] = (),
    ) -> None:
        """`own_only`: values (a common id, client addresses) cleared only inside the
        subject's own events, never from other people's (docs/erasure.md)."""
        self.subject_id = subject_id
        self.pseudonym = pseudonym
        self.entity_types = entity_types
        self.values = set(values)
        self.own_only = set(own_only)
        self._make()

    def _person_value(self, value: Any) -> str | None:
        text = str(value)
        if text == self.subject_id:
            return self.pseudonym
        folded = text.casefold()
        if any(folded == v.casefold() for v in self.own_only if v != self.subject_id):
            return ERASED
        return None

    def _make(self) -> None:
        ids = {self.subject_id: self.pseudonym}
        self._scrub = Scrubber(ids, self.values)
        self._others = Scrubber(
            {} if self.subject_id in self.own_only else ids, self.values - self.own_only
        )

    def learn(self, document: Any) -> None:
        """Add the subject's names, emails and addresses found in `document` to the values."""
        found: list[str] = []
        self._learn(document, found)
        if not set(found) <= self.values:
            self.values |= set(found)
            self._make()

    def scrub(self, document: Any) -> Any:
        """The document cleared of the subject."""
        return self._walk(document)

    def _is_subject(self, part: Any, *, entity: bool) -> bool:
        if not isinstance(part, dict) or part.get("id") != self.subject_id:
            return False
        return not entity or part.get("type") in self.entity_types

    def _learn(self, value: Any, found: list[str]) -> None:
        if isinstance(value, str):
            if value[:1] in ("{", "[") and (inner := _json_or_none(value)) is not None:
                self._learn(inner, found)
            return
        if isinstance(value, list):
            for v in value:
                self._learn(v, found)
            return
        if not isinstance(value, dict):
            return
        actor: Any = value.get("actor")
        entity: Any = value.get("entity")
        request: Any = value.get("request")
        is_actor = self._is_subject(actor, entity=False)
        is_entity = self._is_subject(entity, entity=True)
        if is_actor:
            found += [str(actor[k]) for k in ("name", "email") if actor.get(k)]
        if is_entity and entity.get("name"):
            found.append(str(entity["name"]))
        if (is_actor or is_entity) and isinstance(request, dict) and request.get("ip"):
            found.append(str(request["ip"]))
        for v in value.values():
            self._learn(v, found)

    def _walk(self, value: Any, own: bool = False) -> Any:
        if isinstance(value, str):
            if value[:1] in ("{", "[") and (inner := _json_or_none(value)) is not None:
                return _encoder.encode(self._walk(inner, own)).decode()
            scrub = self._scrub if own else self._others
            if value.startswith(RAW_BYTES_PREFIX):  # bytes that are not UTF-8, in base64
                return clear_raw_bytes(value, scrub.text)
            return scrub.text(value)
        if isinstance(value, list):
            return [self._walk(v, own) for v in value]
        if not isinstance(value, dict):
            return value
        actor: Any = value.get("actor")
        entity: Any = value.get("entity")
        request: Any = value.get("request")
        is_actor = self._is_subject(actor, entity=False)
        is_entity = self._is_subject(entity, entity=True)
        own = own or is_actor or is_entity  # the subject's own event: every value cleared
        scrub = self._scrub if own else self._others
        result = {scrub.text(str(k)): self._walk(v, own) for k, v in value.items()}
        if not own and self.own_only:  # a common value, where a field naming a person holds it
            result = person_fields(result, self._person_value)
        if is_actor:
            kept = {k: v for k, v in actor.items() if k not in ("name", "email")}
            result["actor"] = {**kept, "id": self.pseudonym}
        if is_entity:
            kept = {k: v for k, v in entity.items() if k != "name"}
            result["entity"] = {**kept, "id": self.pseudonym}
        if (is_actor or is_entity) and isinstance(request, dict):
            kept = {k: v for k, v in request.items() if k not in ("ip", "user_agent")}
            result["request"] = self._walk(kept, own)
        return result


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _json_or_none(text: str) -> Any:
    try:
        return _decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None


def mention_scrubber(found: dict[str, str | None]) -> Scrubber | None:
    """A scrubber of the erased values found (literal -> pseudonym of an id, or None)."""
    if not found:
        return None
    ids = {literal: p for literal, p in found.items() if p is not None}
    return Scrubber(ids, [literal for literal, p in found.items() if p is None])


def clear_mentions(event: AuditEvent, mentions: MentionIndex) -> AuditEvent:
    """The event with erased subjects' ids, names and emails cleared from its texts (entity
    name, request path, metadata, changes, presentation); itself when it holds none."""
    plain = msgspec.to_builtins(event)
    texts = {f: plain[f] for f in ("metadata", "changes", "presentation") if f in plain}
    entity, request = plain.get("entity") or {}, plain.get("request") or {}
    texts["entity.name"] = entity.get("name")
    texts["request.path"] = request.get("path")
    found: dict[str, str | None] = {}
    mentions.find_in(list(texts.values()), found)
    scrub = mention_scrubber(found)
    changed = scrub is not None
    for field in ("metadata", "changes", "presentation"):
        if field in plain:
            value = scrub.json(plain[field]) if scrub is not None else plain[field]
            if mentions.person:  # common values: only where a field naming a person holds one
                value = person_fields(value, lambda v: ERASED if mentions.names_person(v) else None)
            changed = changed or value != plain[field]
            plain[field] = value
    if not changed:
        return event
    if scrub is not None and entity.get("name"):
        entity["name"] = scrub.text(entity["name"])
    if scrub is not None and request.get("path"):
        request["path"] = scrub.text(request["path"])
    return msgspec.convert(plain, AuditEvent)


def person_fields(value: Any, replace: Callable[[Any], str | None], person: bool = False) -> Any:
    """JSON data with each whole value of a field naming a person replaced where `replace`
    says (schema.sql's auditq_erase_person_fields, the same keys)."""
    if isinstance(value, dict):
        return {
            k: person_fields(
                v,
                replace,
                str(k).lower() in PERSON_KEYS or (person and str(k).lower() in PERSON_INNER_KEYS),
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [person_fields(v, replace, person) for v in value]
    if person and (
        isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    ):
        replaced = replace(value)
        return value if replaced is None else replaced
    return value
