"""Mentions of erased subjects in later events, found without the subjects' values.

Erasure clears other people's later events of an erased subject's id, names and emails
wherever they stand (contract §9). The store keeps no value of an erased subject, only a
keyed digest of each (BLAKE2b keyed with the subject key, a file no database role reads),
of its first word, and its number of words: a worker holding the key digests the word runs
of each text and looks them up, so a database reader cannot test a guessed id or name.

A value is matched like `auditq_anonymise_rows()` matches it: case-insensitively, as a run
of whole words (a word is a run of letters and digits), so `alice` is found in
`/users/alice/x` and `alice.example.com`, not in `malice`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

WORD = re.compile(r"[^\W_]+")
_SCALAR = re.compile(r'"([^"\\]{1,1024})"|(?<![\w.])(-?[0-9]{1,19})(?![\w.])')
_NOT_WORD = re.compile(r"[\W_]+")  # splitting on it is ~3x faster than finding WORD
DIGEST_BYTES = 16
# JSON keys that name a person (any case), and keys inside such a field's object that name
# the same person: auditq_erase_person_fields() in schema.sql has the same lists.
PERSON_KEYS = frozenset(
    "user userid user_id username user_name login email actor actorid actor_id subject "
    "subjectid subject_id owner ownerid owner_id account accountid account_id member memberid "
    "member_id customer customerid customer_id person personid person_id assignee assignee_id "
    "assigneeid invitee invitee_id recipient recipient_id author author_id".split()
)
PERSON_INNER_KEYS = frozenset(("id", "name", "email", "login", "username"))
MAX_CACHED_WORDS = 100_000  # words whose digest a worker remembers
MAX_WORDS = 16  # a value of more words is not looked for in later events (docs/erasure.md)
_PERSON = b"auditq-mention"


def digest(key: bytes, text: str) -> bytes:
    """The keyed digest of a text as it is matched (any case)."""
    return hashlib.blake2b(
        # surrogatepass: a text read from bytes that are not UTF-8 holds lone surrogates
        # between its words (service/queue/jobs.py clear_raw_bytes); no value has one.
        text.casefold().encode("utf-8", "surrogatepass"),
        key=key,
        digest_size=DIGEST_BYTES,
        person=_PERSON,
    ).digest()


def trimmed(value: str) -> str:
    """The value from its first word to its last (what a text can hold of it)."""
    spans = [m.span() for m in WORD.finditer(value)]
    return value[spans[0][0] : spans[-1][1]] if spans else ""


def entry(key: bytes, value: str) -> tuple[bytes, bytes, int] | None:
    """What the store keeps of one value: (digest, digest of its first word, words)."""
    value = trimmed(value)
    words = WORD.findall(value)
    if not words or len(words) > MAX_WORDS:
        return None
    return digest(key, value), digest(key, words[0]), len(words)


class MentionIndex:
    """The erased subjects' values as digests: finds them in a text, and clears them."""

    def __init__(
        self, key: bytes, rows: Iterable[tuple[bytes, bytes, int, str | None, bool]]
    ) -> None:
        """`rows`: (digest, anchor, words, pseudonym for an id or None for a name/email,
        whether it is cleared only where a field naming a person holds it whole)."""
        self.key = key
        # Word -> the word counts of values it begins (empty: none). Words repeat a lot
        # (keys, actions, types): each is hashed once, not once per occurrence.
        self._words: dict[str, frozenset[int]] = {}
        self.anchors: dict[bytes, set[int]] = {}
        self.values: dict[bytes, str | None] = {}
        self.person: set[bytes] = set()
        for value_digest, anchor, words, replacement, person_only in rows:
            if person_only:
                self.person.add(value_digest)
                continue
            self.anchors.setdefault(anchor, set()).add(words)
            self.values[value_digest] = replacement

    def __bool__(self) -> bool:
        return bool(self.values or self.person)

    def person_in(self, json_text: str) -> bool:
        """Tell whether JSON text without escapes has a string or integer that is an erased
        value too common to clear elsewhere (wherever it stands: a quick look)."""
        if not self.person:
            return False
        scalars = {a or b for a, b in _SCALAR.findall(json_text)}
        return any(self.names_person(s) for s in scalars)

    def names_person(self, value: Any) -> bool:
        """Tell whether a whole JSON value (in a field naming a person) is an erased value
        too common to clear elsewhere."""
        if not self.person or isinstance(value, bool) or not isinstance(value, str | int):
            return False
        return digest(self.key, str(value)) in self.person

    def find(self, text: str) -> dict[str, str | None]:
        """The erased values in the text, as it holds them: literal -> pseudonym (an id) or
        None (a name or email)."""
        found: dict[str, str | None] = {}
        if not self.values:
            return found
        # First, cheaply: does any distinct word of the text begin a value?
        if not any(self._begins(w) for w in set(_NOT_WORD.split(text.casefold())) if w):
            return found
        spans = [m.span() for m in WORD.finditer(text)]
        key, values = self.key, self.values
        for i, (start, end) in enumerate(spans):
            lengths = self._begins(text[start:end].casefold())
            if not lengths:
                continue
            for n in lengths:
                if i + n <= len(spans):
                    literal = text[start : spans[i + n - 1][1]]
                    d = digest(key, literal)
                    if d in values:
                        found[literal] = values[d]
        return found

    def _begins(self, word: str) -> frozenset[int]:
        """The word counts of the values that begin with this (casefolded) word."""
        lengths = self._words.get(word)
        if lengths is None:
            if len(self._words) >= MAX_CACHED_WORDS:
                self._words.clear()
            lengths = frozenset(self.anchors.get(digest(self.key, word), ()))
            self._words[word] = lengths
        return lengths

    def find_in(self, value: Any, found: dict[str, str | None]) -> None:
        """Add the erased values in every key and string of JSON data to `found`."""
        if isinstance(value, str):
            found.update(self.find(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                found.update(self.find(str(k)))
                self.find_in(v, found)
        elif isinstance(value, list):
            for v in value:
                self.find_in(v, found)
