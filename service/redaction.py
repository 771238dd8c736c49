"""Redact secrets from audit event payloads and free-form strings before they are stored.

Three rules, applied to every string of an event (service/events.py `redact_event`) and to
everything else auditq keeps or shows: dead letters, task payloads, arq results, error
bodies and log lines.

The key rule. A mapping key (or the `field` of a change, or the key of a `key=value` pair in
text) names a secret when one of the WORDS it is made of does. A key is cut into words on
case changes, digits and every other character (`userPassword` -> user, password;
`x-api-key` -> x, api, key; `password2` -> password, 2), and a word, or two or three
adjacent words joined (`api`+`key`, `session`+`id`, `backup`+`codes`), is a secret word when
it is in SECRET_WORDS, is the plural of one, or ends with one of SECRET_ENDINGS
(`dbpassword`, `githubtoken`). What it costs: a key that merely mentions a secret also loses
its value. Two exceptions keep the commonest of those readable: a key whose last word
describes the secret rather than holding it (DESCRIPTORS: `token_count`, `password_hint`,
`password_changed_at`, `token_type`, `cookie_consent`) and a key that starts with a
quantity (`max_tokens`, `num_tokens`). Other mentions stay redacted on purpose, for
example `prompt_tokens`, `token_id`, a `pass` key or a `pass: 10` in free text: a lost
number or label is the price of never keeping a secret whose key someone named
creatively. AUDITQ_REDACT_EXTRA_KEYS adds keys, matched the same way on words (an extra
`ssn` also catches `user_ssn`).

Short words (`key`, `auth`, `session`, `sid`: FINAL_WORDS) name a secret only as a key's last
word (`ssh_key`, `x-auth`, `connect.sid`), unless the word before says otherwise
(`public_key`, `cache_key`). The words are data: service/redaction_rules.json, "keys".

The pair rule. A small mapping whose name field (last word `name`, `key`, `header`, …)
holds a sensitive name loses its value fields (last word `value`, `val`, `data`, …):
Kubernetes env, HAR headers, OpenTelemetry attributes, AWS tags. A list of two-item lists
loses the second item of each whose first names a secret; an argument list loses the item
after a sensitive flag. The same shapes are found in text.

The value rule. Whatever key holds it, a string loses the credentials it carries: the
formats of the rule data (gitleaks' maintained set and auditq's own, service/redaction_rules.py),
the value of a sensitive `key=value` / `key: value` pair (URL query strings, JSON inside
text, `--flag value`, XML elements, YAML blocks included), the password of
`scheme://user:password@host`, the credential after `Bearer` / `Basic`, PEM private-key
blocks; a URL-encoded run is decoded (twice at most) and redacted as plain text; a
Luhn-valid card number keeps only its last four digits. Each secret is replaced by
"[REDACTED]"; redacting twice changes nothing. docs/redaction.md lists what is caught and
what it costs in false positives.

Speed. Before any rule runs, one pass (Hyperscan where it is installed, else an
Aho-Corasick DFA) over the text, or over a whole encoded event (`json_matches`), looks for
the stems of the secret words, the token rules' keywords and a card number's shape; most
events stop there, and an event where only keywords occur runs just those rules. Over an
event the scan says where it matched: only the strings and parts a match falls in meet the
rules. Many strings are pre-checked in one automaton call (`redact_strings`): only those a
match falls in meet the rules. What a key is (sensitive, a pair's name) is remembered in a
dict, so a key costs a lookup. `python -m bench.redaction_compare`.
"""

import bisect
import functools
import itertools
import re
import threading
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import unquote

import ahocorasick_rs
import msgspec

from service.redaction_rules import KEYS, KEYWORDS, token_spans

try:  # one pass over hundreds of patterns; wheels for Linux x86-64 (pyproject.toml)
    import hyperscan
except ImportError:  # pragma: no cover - elsewhere the Aho-Corasick automaton does it
    hyperscan = None  # type: ignore[assignment]

REDACTED = "[REDACTED]"
MAX_DEPTH = 200  # levels of nested dicts/lists redacted; anything deeper is replaced whole

# The key rule's words, from the rule data (service/redaction_rules.json, "keys").
# Words (after lowercasing, and each also in the plural) that name a secret wherever they
# stand in a key. Joined forms ("apikey") cover keys whose words are glued together.
SECRET_WORDS: frozenset[str] = frozenset(KEYS["words"])
# A single word ending in one of these is a secret word too (dbpassword, githubtoken).
SECRET_ENDINGS: tuple[str, ...] = tuple(KEYS["endings"])
# Short words that name a secret only as a key's last word (`ssh_key`, `connect.sid`,
# `x-auth`), unless the word before says otherwise (`public_key`, `cache_key`).
FINAL_WORDS: frozenset[str] = frozenset(KEYS["final_words"])
NOT_SECRET_BEFORE_FINAL: dict[str, frozenset[str]] = {
    word: frozenset(before) for word, before in KEYS["not_secret_before_final"].items()
}
# A key whose last word is one of these describes a secret rather than holding it.
DESCRIPTORS: frozenset[str] = frozenset(KEYS["descriptors"])
QUANTITIES: frozenset[str] = frozenset(KEYS["quantities"])
# A mapping with one of PAIR_NAMES holding a sensitive name is a name/value pair: its
# PAIR_VALUES fields hold the secret ({"name": "DB_PASSWORD", "value": …}); matched
# case-insensitively (AWS tags say Key/Value).
PAIR_NAMES: frozenset[str] = frozenset(KEYS["pair_names"])
PAIR_VALUES: frozenset[str] = frozenset(KEYS["pair_values"])
SENSITIVE_KEYS = SECRET_WORDS  # the former name

_PART_RE = re.compile(r"[A-Za-z]+|[0-9]+")  # between separators; digits stand alone
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # a part cut on case changes
_JOIN_MAX = 3  # adjacent words joined when looking for a secret word


# Letters that read as an ASCII letter once lowercased or uppercased: Kelvin's K ("k"), the
# dotted capital I and the dotless small i of Turkish casing (a Turkish locale's upper() of
# `session_id` is `SESSİON_ID`; its lower() of `CREDENTIALS` has dotless i's). A key's words
# and the text pre-check read them as those letters (one character each: offsets hold).
_AS_ASCII = str.maketrans({"\u212a": "K", "\u0130": "I", "\u0131": "i"})


def _lower(text: str) -> str:
    """text.lower() with the letters of _AS_ASCII read as ASCII (the same length as text)."""
    return text.lower() if text.isascii() else text.translate(_AS_ASCII).lower()


def _split(key: str) -> tuple[str, ...]:
    words: list[str] = []
    for part in _PART_RE.findall(key):
        pieces = _WORD_RE.findall(part)
        if len(pieces) > 1 and any(len(piece) <= 2 for piece in pieces):
            # Casing that cuts a part into scraps (`paSSwD`, `userID`): one glued word.
            words.append(part.lower())
        else:
            words += (piece.lower() for piece in pieces)
    return tuple(words)


def key_words(key: str) -> tuple[str, ...]:
    """The lowercase words a key is made of: `userPassword2` -> ("user", "password", "2")."""
    return _split_cached(key) if len(key) <= _CACHED_KEY_MAX_CHARS else _split(key)


_split_cached = functools.lru_cache(maxsize=8192)(_split)


def _is_secret_word(word: str, *, single: bool) -> bool:
    """Tell whether a word (`single`) or adjacent words joined name a secret."""
    base = word[:-1] if len(word) > 3 and word.endswith("s") else word
    return (
        word in SECRET_WORDS
        or base in SECRET_WORDS
        or base.endswith(SECRET_ENDINGS)
        # A glued word such as "passwordhash"; joined words have their own ends.
        or (single and base.startswith(("password", "passwd", "passphrase")))
    )


def _is_glued_secret(part: str) -> bool:
    """Tell whether a part of a key that casing cuts into pieces is, read as one lowercase
    word, exactly a secret word (`authORIZatIon`, `PassWord`)."""
    word = part.lower()
    if word == part or len(_WORD_RE.findall(part)) < 2:
        return False  # no casing to undo: the word rule reads it
    return word in SECRET_WORDS or (word.endswith("s") and word[:-1] in SECRET_WORDS)


def _normalize(key: str) -> str:
    """Lowercase a key and drop every non-alphanumeric character."""
    return "".join(ch for ch in key.lower() if ch.isalnum())


@functools.lru_cache(maxsize=64)
def _normalize_all(keys: frozenset[str]) -> frozenset[str]:
    """Normalize a set of extra keys once per distinct set."""
    return frozenset(n for n in (_normalize(key) for key in keys) if n)


def is_sensitive_key(key: str, extra_keys: frozenset[str] = frozenset()) -> bool:
    """Tell whether a mapping key, change field or header name names a secret."""
    # Keys repeat from event to event: remembered, a key costs a dict lookup, not a split.
    cache = _key_cache(extra_keys) if extra_keys else _SENSITIVE_KEYS_SEEN
    try:
        return cache[key]
    except KeyError:
        sensitive = _is_sensitive_key(key, extra_keys)
        if len(key) <= _CACHED_KEY_MAX_CHARS:
            if len(cache) >= _KEYS_REMEMBERED:
                cache.clear()  # a producer of endless distinct keys: start over
            cache[key] = sensitive
        return sensitive


_CACHED_KEY_MAX_CHARS = 64
_KEYS_REMEMBERED = 8192
_SENSITIVE_KEYS_SEEN: dict[str, bool] = {}


@functools.lru_cache(maxsize=64)
def _key_cache(extra_keys: frozenset[str]) -> dict[str, bool]:
    """is_sensitive_key's memory for one set of extra keys."""
    return {}


def _is_sensitive_key(key: str, extra_keys: frozenset[str], final: bool = True) -> bool:
    """The key rule; without `final`, a short final word alone (`key`, `sid`) does not count.
    A key that holds escapes as written (`to\\u212aen`: a key of JSON written by hand inside
    a string, decoded) is read with them unescaped too, up to _UNESCAPE_MAX levels."""
    if _is_sensitive_key_read(key, extra_keys, final):
        return True
    if "\\" not in key:
        return False
    view = key
    for _ in range(_UNESCAPE_MAX):
        unescaped = _ESCAPE_RE.sub(_unescape_one, view)
        if unescaped == view:
            return False
        view = unescaped
        if _is_sensitive_key_read(view, extra_keys, final):
            return True
    return False


def _is_sensitive_key_read(key: str, extra_keys: frozenset[str], final: bool) -> bool:
    """The key rule on a key as written, and with the letters of _AS_ASCII as ASCII."""
    if _is_sensitive_key_as_read(key, extra_keys, final):
        return True
    # Read again with the letters of _AS_ASCII as ASCII (`toKen`, `SESSİON_ID`): as read they
    # part words (`İkey` ends in `key`), as ASCII they may join them.
    if key.isascii():
        return False
    as_ascii = key.translate(_AS_ASCII)
    return as_ascii != key and _is_sensitive_key_as_read(as_ascii, extra_keys, final)


def _is_sensitive_key_as_read(key: str, extra_keys: frozenset[str], final: bool) -> bool:
    words = key_words(key)
    if not words:
        return False
    if any(_is_glued_secret(part) for part in _PART_RE.findall(key)):
        return True  # a secret word in any casing (`authORIZatIon`), split or not
    if extra_keys and _names_extra_key(words, _normalize_all(extra_keys)):
        return True
    if words[0] in QUANTITIES and len(words) > 1:
        return False
    last_word = words[-1]
    if (
        final
        and last_word in FINAL_WORDS
        and (len(words) == 1 or words[-2] not in NOT_SECRET_BEFORE_FINAL.get(last_word, ()))
    ):
        return True
    last = len(words) - 1
    found = False
    for start in range(len(words)):
        joined = ""
        for end in range(start, min(len(words), start + _JOIN_MAX)):
            joined += words[end]
            if _is_secret_word(joined, single=end == start):
                if end == last:
                    return True  # the key ends with the secret: it holds it
                found = True
    return found and words[-1] not in DESCRIPTORS


def _names_extra_key(words: tuple[str, ...], extras: frozenset[str]) -> bool:
    """Tell whether consecutive words of a key spell one of the extra keys."""
    for start in range(len(words)):
        joined = ""
        for word in words[start:]:
            joined += word
            if joined in extras:
                return True
    return False


_is_sensitive_key_cached = functools.lru_cache(maxsize=8192)(_is_sensitive_key)  # final=False


# The pre-check: every rule below needs one of these in the lowercased text (a secret word
# holds one of the stems; a credential format has its keywords, from the rule data; a URL
# password "://", maybe URL-encoded), or a run of digits that could be a card number.
# Text without any (most values) is returned as it is, at once. One Aho-Corasick automaton
# finds any of them in a single pass (a regex alternation would try each at every position).
# Short final words ("auth", "sid") are stems only where they end a name or key (`"auth":`,
# `x-auth`, `connect.sid`, `auth=`) or name a pair (`["auth", …]`, `{"name": "auth", …}`),
# so that an `auth.login` action (and its presentation code `audit.auth.login`) leaves the
# event alone.
_SHORT_FINAL_WORDS = ("auth", "sid")
_HAND_STEMS: tuple[str, ...] = (
    *("pass", "pwd", "pw", "secret", "token", "cookie", "cred", "authoriz", "jwt", "otp"),
    *("key", "session", "sessid", "backup", "recovery", "2fa", "mfa", "sig", "bearer"),
    *("basic", "-----", "://", "%3a%2f%2f", "%253a"),
    *(
        stem
        for word in _SHORT_FINAL_WORDS
        for stem in (
            *(f'{word}":', f"{word}':", f'{word}\\"', f"{word}=", f"{word}:", f"{word}>"),
            # A pair's name: first in a list, or a name/value mapping's name
            *(f'["{word}"', f'[ "{word}"', f"['{word}'", f"('{word}'", f'"{word}" :'),
            *(
                form.format(role=role, word=word)
                for role in ("name", "key", "field")
                for form in ('{role}":"{word}"', '{role}": "{word}"', "{role}': '{word}'")
            ),
        )
    ),
    *("-auth", "_auth", "-sid", "_sid", ".sid"),
)
# Every word of the rule data that holds none of the stems above is a stem itself.
STEMS: tuple[str, ...] = (
    *_HAND_STEMS,
    *sorted(
        word
        for word in {*SECRET_WORDS, *SECRET_ENDINGS, *FINAL_WORDS} - set(_SHORT_FINAL_WORDS)
        if not any(stem in word for stem in _HAND_STEMS)
    ),
)
# A card number: 13 to 19 digits, maybe in groups (4-4-4-4, 4-6-5), starting with 2-6; not
# after a letter, a digit or a dash, but after a PEM line's five dashes (`KEY-----3782…`).
_CARD_RE = re.compile(
    r"(?:(?<![\w-])|(?<=-----))(?<!\d\.)"
    r"(?P<card>[2-6]\d{12,18}|[2-6]\d{3}(?P<sep>[ -])\d{4}(?P=sep)\d{4}"
    r"(?P=sep)\d{1,7}|3\d{3}(?P<sep2>[ -])\d{6}(?P=sep2)\d{4,5})(?![\w-]|\.\d)"
)


class _Precheck:
    """The pre-check for one set of extra keys: the stems, the extra keys' words, the token
    rules' keywords and a card-number shape, found in one pass over text or UTF-8 bytes."""

    def __init__(self, extra_keys: frozenset[str]) -> None:
        words = {max(key_words(key) or (_normalize(key),), key=len) for key in extra_keys}
        stems = [*STEMS, *sorted(word for word in words if word)]
        self.stem_count = len(stems)
        patterns = [*stems, *KEYWORDS]
        # Only whether a pattern occurs counts, and every match kind finds one when any
        # does; leftmost-first lets the automaton skip ahead, the DFA is its fastest form.
        kind = ahocorasick_rs.MatchKind.LeftmostFirst
        dfa = ahocorasick_rs.Implementation.DFA
        self.text = ahocorasick_rs.AhoCorasick(patterns, matchkind=kind, implementation=dfa)
        self.data = ahocorasick_rs.BytesAhoCorasick(
            [p.encode() for p in patterns], matchkind=kind, implementation=dfa
        )
        # A keyword's match can hide a stem it overlaps ("sk" in "askey"): asked apart.
        self.stems_text = ahocorasick_rs.AhoCorasick(stems, matchkind=kind)
        self.stems_data = ahocorasick_rs.BytesAhoCorasick([s.encode() for s in stems])
        # Patterns an id's hex digits can spell ("2fa", "a3-", "acca"): a match of one inside
        # a UUID string value (every event's id) is no match (_inside_uuid); their lengths.
        self.hexish = {
            i: len(p) for i, p in enumerate(patterns) if _HEXISH_RE.fullmatch(p) and p.strip("-")
        }
        self.scanner: _Scanner | None = None
        if hyperscan is not None:
            self.scanner = _Scanner(patterns, len(stems), self.hexish)

    def verdict(self, data: bytes) -> int:
        """What the pre-check finds in UTF-8 bytes: _KEYWORDS | _STEMS | _CARDS bits."""
        if self.scanner is not None:
            return self.scanner.scan(data)
        low = data.lower()
        found = self._outside_ids(data, self.data.find_matches_as_indexes(low))
        verdict = _CARDS if _CARD_DIGITS in data.translate(_DIGITS_TO_0, b" -") else 0
        if found:
            verdict |= _KEYWORDS
            if any(i < self.stem_count for i, _, _ in found) or self._outside_ids(
                data, self.stems_data.find_matches_as_indexes(low)
            ):
                verdict |= _STEMS
        return verdict

    def _outside_ids(
        self, data: bytes, found: list[tuple[int, int, int]]
    ) -> list[tuple[int, int, int]]:
        """The matches but those of hex patterns inside a UUID string value."""
        hexish = self.hexish
        return [m for m in found if m[0] not in hexish or not _inside_uuid(data, m[1], m[2])]


# Pre-check verdicts, as bits: a token rule's keyword, a stem (of a secret word, a URL…), a
# card number's shape; and a mark (_TEXT_ONLY_MARKS), which is no verdict.
_KEYWORDS, _STEMS, _CARDS, _MARKS = 1, 2, 4, 8
# What the text pre-check of a string may find that the scan of its JSON does not: a name
# beside a character JSON escapes (`pin\t…`, `\npin …`, `auth\"`: in JSON the escape's
# letter or backslash stands where the text has a separator), and the three letters the text
# pre-check reads as ASCII (_AS_ASCII: Kelvin's K, the dotted capital I, the dotless small i).
# In JSON: a backslash (every escape has one), the letters' UTF-8.
_TEXT_ONLY_MARKS = (b"\\", "\u212a".encode(), "\u0130".encode(), "\u0131".encode())
_CARD_MIN_CHARS = 13
_CARD_DIGITS = b"0" * _CARD_MIN_CHARS
_DIGITS_TO_0 = bytes.maketrans(b"0123456789", b"0000000000")
# What the pre-check takes for a card number in text (the rule, _CARD_RE, then decides).
_CARD_HINT = rb"[2-6][0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}"
_AMEX_HINT = rb"3[0-9]{3}[ -][0-9]{6}[ -][0-9]{4}"  # 4-6-5 (and Diners' 4-6-4)
_CARD_QUICK_RE = re.compile((_CARD_HINT + b"|" + _AMEX_HINT).decode())
# The same in JSON, for the Hyperscan pre-check, as one expression (each expression that is
# not a literal costs a pass of its own, as much as all the literals together): 13 digits,
# or 4 digits and the usual groups, starting with 2-6. Not inside an id (UUIDs hold runs of
# digits and dashes): after neither a digit, a letter nor a dash, unless the letter ends a
# JSON escape (`\n4111…`, `\u00014111…`: the string holds a separator there).
_JSON_CARD_SHAPE = (
    rb"(?:^|[^0-9a-z-]|\\[a-z]|\\u[0-9a-f]{4})[2-6][0-9]{3}"
    rb"(?:[0-9]{9}|[ -][0-9]{4}[ -][0-9]{4}|[ -][0-9]{6}[ -][0-9]{4})"
)
# A JSON escape, read as the separator it stands for when JSON text is searched for cards.
_JSON_ESCAPE_RE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|[a-z])")


_OnMatch = Callable[[int, int, int, int, Any], bool]  # hyperscan's match handler


class _Scanner:
    """The pre-check's patterns and the card hint as one Hyperscan database: every pattern
    in one pass, case-insensitively, without lowering the text first (hyperscan is there
    on Linux x86-64; elsewhere the Aho-Corasick automaton does the same, slower)."""

    def __init__(self, patterns: list[str], stem_count: int, hexish: dict[int, int]) -> None:
        assert hyperscan is not None
        self.card = len(patterns)
        marks = range(self.card + 1, self.card + 1 + len(_TEXT_ONLY_MARKS))
        ids = [*_needed_patterns(patterns, stem_count, hexish), self.card, *marks]
        expressions = [
            *(re.escape(patterns[i]).encode() for i in ids[: -len(marks) - 1]),
            _JSON_CARD_SHAPE,
            *(re.escape(mark) for mark in _TEXT_ONLY_MARKS),
        ]
        self.stem_count = stem_count
        self.db = hyperscan.Database()
        self.db.compile(
            expressions=expressions,
            ids=ids,
            elements=len(expressions),
            # Every match is reported, not only each pattern's first: where each is tells
            # which parts of an event need rules (json_matches). A clean event has none.
            # Of a mark, whether there is one is enough.
            flags=[
                hyperscan.HS_FLAG_CASELESS | (hyperscan.HS_FLAG_SINGLEMATCH if i in marks else 0)
                for i in ids
            ],
        )
        self.local = threading.local()  # a scratch space per thread, as hyperscan needs
        self.on_match = _verdict_callback(stem_count, self.card, hexish)
        self.on_match_needed = _needed_callback(stem_count, self.card, hexish)
        # Each pattern's length in bytes, to tell where its match starts (the card shape's
        # length varies: its last digit stands for it).
        lengths = [len(pattern.encode()) for pattern in patterns] + [1]
        self.on_match_located = _located_callback(stem_count, self.card, hexish, lengths)
        # The same patterns reporting where each match starts, for many events at once.
        self.located = hyperscan.Database()
        self.located.compile(
            expressions=expressions,
            ids=ids,
            elements=len(expressions),
            flags=[hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SOM_LEFTMOST] * len(expressions),
        )

    def scan(self, data: bytes, on_match: _OnMatch | None = None) -> int:
        """The verdict's bits (`on_match`: on_match_needed stops at the first stem or card
        shape, its verdict says whether rules must run, not whether a card may be there)."""
        found: list[Any] = [0, data]  # the verdict's bits, set by on_match; the data seen
        on_match = on_match or self.on_match
        try:
            # The database's own scratch space first: the common case, and the fastest.
            # Positional arguments: the binding parses keywords slower than the scan runs.
            self.db.scan(data, on_match, 0, found)
        except hyperscan.ScanTerminated:
            pass  # on_match stopped it: the verdict is in
        except hyperscan.ScratchInUseError:
            # Another thread is scanning: this thread's own scratch space.
            scratch = getattr(self.local, "scratch", None)
            if scratch is None:
                scratch = self.local.scratch = hyperscan.Scratch(self.db)
            found = [0, data]
            try:
                self.db.scan(data, match_event_handler=on_match, context=found, scratch=scratch)
            except hyperscan.ScanTerminated:
                pass
        verdict: int = found[0]
        return verdict

    def matches(self, data: bytes) -> tuple[int, list[tuple[int, int, bool]]]:
        """The verdict's bits and every match: (start, end, whether a stem or card shape)."""
        found: list[Any] = [0, data, []]
        try:
            self.db.scan(data, self.on_match_located, 0, found)
        except hyperscan.ScratchInUseError:
            scratch = getattr(self.local, "scratch", None)
            if scratch is None:
                scratch = self.local.scratch = hyperscan.Scratch(self.db)
            found = [0, data, []]
            self.db.scan(
                data, match_event_handler=self.on_match_located, context=found, scratch=scratch
            )
        return found[0], found[2]

    def scan_outside_uuids(self, data: bytes) -> int:
        """scan() of JSON text, matches inside UUID string values left out."""
        found = [0]
        stem_count, card = self.stem_count, self.card

        def on_match(index: int, start: int, end: int, flags: int, context: object) -> bool:
            if index > card or _inside_uuid(data, start, end):
                return False  # a mark (_TEXT_ONLY_MARKS), or an id's digits
            if index < stem_count or index >= card:
                found[0] |= _STEMS | (_CARDS if index >= card else 0)
                return True  # stop: the events must go the slow way
            found[0] |= _KEYWORDS
            return False

        scratch = getattr(self.local, "located", None)
        if scratch is None:
            scratch = self.local.located = hyperscan.Scratch(self.located)
        try:
            self.located.scan(data, match_event_handler=on_match, scratch=scratch)
        except hyperscan.ScanTerminated:
            pass
        return found[0]


def _needed_patterns(patterns: list[str], stem_count: int, hexish: dict[int, int]) -> list[int]:
    """The indexes of the patterns the scan needs: not one that holds another pattern
    (`password` holds the stem `pass`, `eyj` the keyword `ey`), whose match is then always
    found with it, and says as much (a stem, or a keyword in a keyword). The held pattern
    is no hex pattern, whose match inside an id would not count. A keyword's match is a
    callback the scan makes, and each of its patterns costs every scan."""
    low = [pattern.lower() for pattern in patterns]
    holders: dict[str, list[int]] = {}  # each pattern that may be held: where it is
    for index, pattern in enumerate(low):
        if index not in hexish:
            holders.setdefault(pattern, []).append(index)
    words = list(holders)
    automaton = ahocorasick_rs.AhoCorasick(words)

    def held(index: int) -> bool:
        return any(
            other != index
            and (other < stem_count or index >= stem_count)  # a stem, or keyword in keyword
            and (low[other] != low[index] or other < index)  # of two the same, the first
            for found, _, _ in automaton.find_matches_as_indexes(low[index], overlapping=True)
            for other in holders[words[found]]
        )

    return [index for index in range(len(low)) if not held(index)]


def _verdict_callback(stem_count: int, card: int, hexish: dict[int, int]) -> _OnMatch:
    """Hyperscan's match handler for a database of stems, then keywords, then card shapes;
    its context is [verdict bits, the data scanned]."""

    def on_match(index: int, start: int, end: int, flags: int, found: Any) -> bool:
        if index > card:
            return False  # a mark (_TEXT_ONLY_MARKS): no verdict
        if index == card:
            found[0] |= _CARDS | _STEMS
            return True  # stop: every rule must run, cards included
        if index in hexish and _inside_uuid(found[1], end - hexish[index], end):
            return False  # an id's hex digits, not a stem
        found[0] |= _STEMS if index < stem_count else _KEYWORDS
        return False  # on, to learn whether a card number may be there too

    return on_match


def _needed_callback(stem_count: int, card: int, hexish: dict[int, int]) -> _OnMatch:
    """Hyperscan's match handler that stops at the first stem or card shape (rules must
    run): its verdict tells no card from a stem."""

    def on_match(index: int, start: int, end: int, flags: int, found: Any) -> bool:
        if index > card or (index in hexish and _inside_uuid(found[1], end - hexish[index], end)):
            return False  # a mark (_TEXT_ONLY_MARKS), or an id's digits
        if index < stem_count or index == card:
            found[0] |= _STEMS
            return True
        found[0] |= _KEYWORDS
        return False

    return on_match


def _located_callback(
    stem_count: int, card: int, hexish: dict[int, int], lengths: list[int]
) -> _OnMatch:
    """Hyperscan's match handler that keeps every match (not one inside an id); its context
    is [verdict bits, the data scanned, the matches: (start, end, a stem or card shape)]."""

    def on_match(index: int, start: int, end: int, flags: int, found: Any) -> bool:
        if index in hexish and _inside_uuid(found[1], end - hexish[index], end):
            return False
        if index < stem_count:
            found[0] |= _STEMS
        elif index < card:
            found[0] |= _KEYWORDS
        elif index == card:
            found[0] |= _CARDS | _STEMS
        else:
            found[0] |= _MARKS
            return False
        found[2].append((end - lengths[index], end, index < stem_count or index == card))
        return False

    return on_match


# A pattern made only of what a UUID is made of (lowercase hex digits and dashes).
_HEXISH_RE = re.compile(r"[0-9a-f-]+")


_PRECHECK = _Precheck(frozenset())
# json_matches' common case, bound once: the scan of the default pre-check, its handler.
if _PRECHECK.scanner is not None:
    _SCAN: Callable[..., None] | None = _PRECHECK.scanner.db.scan
    _ON_MATCH = _PRECHECK.scanner.on_match_located
    _ScratchInUse = hyperscan.ScratchInUseError
else:  # pragma: no cover - without hyperscan
    _SCAN = None


@functools.lru_cache(maxsize=64)
def _precheck_for(extra_keys: frozenset[str]) -> _Precheck:
    return _Precheck(extra_keys) if extra_keys else _PRECHECK


def may_hold_secret(
    text: str, extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> bool:
    """The cheap pre-check: False means no rule can change `text` (without `cards`: no rule
    but the card numbers')."""
    return _may_hold(text, _lower(text), extra_keys, cards)


def _may_hold(text: str, low: str, extra_keys: frozenset[str], cards: bool) -> bool:
    """may_hold_secret of `text`, `low` its lowercase."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    found = precheck.text.find_matches_as_indexes(low)
    if cards and len(text) >= _CARD_MIN_CHARS and _CARD_QUICK_RE.search(text) is not None:
        return True
    if not found:
        return False  # the common case, decided by one automaton call
    stems = precheck.stem_count
    if any(index < stems for index, _, _ in found):
        return True
    # A keyword's match can hide a stem it overlaps ("sk" in "askey"): asked apart.
    if precheck.stems_text.find_matches_as_indexes(low):
        return True
    # Only token rules' keywords ("ey", "sk" occur in much plain text): do their rules match?
    return bool(token_spans(text, low))


def strings_needing_rules(
    texts: list[str], extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> list[int]:
    """The indexes of the strings of `texts` that may_hold_secret would let through, found
    with one automaton call over all of them (no stem or keyword holds a line break, so a
    match never spans two); redact_sensitive_in_string then decides each of those."""
    joined = "\n".join(texts)
    low = _lower(joined)
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    found = precheck.text.find_matches_as_indexes(low)
    card_hints = (
        list(_CARD_QUICK_RE.finditer(joined))
        if cards and len(joined) >= _CARD_MIN_CHARS and _CARD_QUICK_RE.search(joined)
        else []
    )
    if not found and not card_hints:
        return []  # the common case
    if len(low) != len(joined):  # lowercasing moved the offsets (a few rare letters)
        return list(range(len(texts)))
    starts = [start for _, start, _ in found] + [m.start() for m in card_hints]
    if joined.count("\n") == len(texts) - 1:  # no line break of their own: count the joins
        return sorted({joined.count("\n", 0, start) for start in starts})
    # Past the end of each string and its line break in `joined`: a match starts in the
    # first string whose end is beyond it (never at a line break).
    ends = list(itertools.accumulate([len(text) + 1 for text in texts]))
    return sorted({bisect.bisect_right(ends, start) for start in starts})


def _needs_rules(verdict: int, text: str) -> bool:
    if verdict & (_STEMS | _CARDS):
        return True
    # Only token rules' keywords ("ey", "sk" occur in much plain text): do their rules match?
    return bool(verdict) and bool(token_spans(text, text.lower()))


class JsonMatches(NamedTuple):
    """What the pre-check found in an encoded event (json_matches)."""

    cards: bool  # a card number may be in it
    keywords_only: bool  # only token rules' keywords: rules run where their rules match
    # Where: (start, end, a stem or card shape) in the JSON; None when not known (no hyperscan).
    spans: list[tuple[int, int, bool]] | None
    # A string of it may hold what only its text's pre-check finds (_TEXT_ONLY_MARKS).
    marks: bool


def json_matches(
    data: bytes, extra_keys: frozenset[str] = frozenset(), *, whole: bool = True
) -> JsonMatches | None:
    """The pre-check over a whole encoded event, in one pass, and where it matched: None when
    no rule may change a string of it (`whole`: also when only keywords matched and their
    token rules match nothing in the whole text, as json_precheck decides)."""
    spans: list[tuple[int, int, bool]] | None
    if extra_keys or _SCAN is None:
        scanner = _precheck_for(extra_keys).scanner
        if scanner is None:  # without hyperscan: the verdict alone, and the marks
            verdict, spans = _precheck_for(extra_keys).verdict(data), None
            if any(mark in data for mark in _TEXT_ONLY_MARKS):
                verdict |= _MARKS
        else:
            verdict, spans = scanner.matches(data)
    else:
        # _Scanner.matches' common case inline, its names bound once: every event passes
        # here, and each call or attribute saved is felt.
        found: list[Any] = [0, data, []]
        try:
            _SCAN(data, _ON_MATCH, 0, found)
        except _ScratchInUse:  # another thread is scanning: this thread's scratch space
            found[0], found[2] = _PRECHECK.scanner.matches(data)  # type: ignore[union-attr]
        verdict = found[0]
        if not verdict:
            return None  # the common case
        spans = found[2]
    if verdict == _MARKS:
        # A mark: a tab or a backslash the JSON escapes may end a name the text's pre-check
        # knows (`pin<TAB>1234`, `sid\\"=…`), there or beside keywords (below): every string
        # is pre-checked as text.
        return JsonMatches(False, False, spans, True)
    if not verdict:
        return None
    marks = verdict & _MARKS != 0
    verdict &= ~_MARKS
    if verdict == _KEYWORDS:
        if whole and not marks and not keywords_need_rules(data):
            return None
        return JsonMatches(False, True, spans, marks)
    return JsonMatches(verdict & _CARDS != 0, False, spans, marks)


def keywords_need_rules(data: bytes) -> bool:
    """Whether a token rule matches JSON text where the pre-check found only keywords."""
    return _needs_rules(_KEYWORDS, data.decode(errors="replace"))


def json_precheck(data: bytes, extra_keys: frozenset[str] = frozenset()) -> tuple[bool, bool]:
    """The pre-check over a whole encoded event, in one pass: whether any rule may change a
    string of it, and whether a card number may be in it (pass it on as `cards`)."""
    found = json_matches(data, extra_keys)
    return _NOTHING if found is None else (True, found.cards)


_NOTHING = (False, False)


def may_hold_secret_json(data: bytes, extra_keys: frozenset[str] = frozenset()) -> bool:
    """The pre-check over a whole encoded event, or a part of one: False means no string of
    it needs redaction (its keys and strings are all in the JSON, and no stem holds a
    character JSON escapes). json_precheck()[0], stopping at the first stem."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    scanner = precheck.scanner
    if scanner is None:
        return json_precheck(data, extra_keys)[0]
    verdict = scanner.scan(data, scanner.on_match_needed)
    if verdict == _KEYWORDS:
        return _needs_rules(verdict, data.decode(errors="replace"))
    return verdict != 0


# A JSON string value that is exactly a UUID in its canonical form: no rule changes one (no
# key, no token format fits between its dashes), but its hex digits spell stems ("2fa",
# "acca") often enough that a thousand ids nearly always hold one.
_UUID_VALUE = re.compile(
    rb'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"(?=[,}\]])'
)
_UUID_VALUE_CHARS = 38  # with its quotes


def may_hold_secret_json_text(data: bytes, extra_keys: frozenset[str] = frozenset()) -> bool:
    """may_hold_secret_json over JSON text without a backslash (so every quote delimits a
    string) of any length, e.g. many events: False means no string of it needs redaction.
    Stems, keywords and card shapes found only inside string values that are UUIDs (ids) do
    not count."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    if precheck.scanner is not None:
        verdict = precheck.scanner.scan_outside_uuids(data)
    else:
        verdict = _verdict_outside_uuids(precheck, data)
    if verdict & (_STEMS | _CARDS):
        return True
    if verdict:
        text = data.decode(errors="replace")
        return bool(token_spans(text, text.lower()))
    return False


def holds_text_only_marks(data: bytes) -> bool:
    """Whether JSON text holds a mark (_TEXT_ONLY_MARKS): an escape, or a letter the text
    pre-check reads as ASCII; may_hold_secret_json_text does not see what those hide."""
    return any(mark in data for mark in _TEXT_ONLY_MARKS)


def _inside_uuid(data: bytes, start: int, end: int) -> bool:
    around = max(0, start - _UUID_VALUE_CHARS)
    return any(
        m.start() < start and end < m.end()
        for m in _UUID_VALUE.finditer(data, around, end + _UUID_VALUE_CHARS)
    )


def _verdict_outside_uuids(precheck: _Precheck, data: bytes) -> int:
    """The Aho-Corasick way of _Scanner.scan_outside_uuids (slower: where no hyperscan)."""
    low = data.lower()
    verdict = 0
    for index, start, end in precheck.data.find_matches_as_indexes(low):
        if _inside_uuid(data, start, end):
            continue
        if index < precheck.stem_count:
            return _STEMS
        verdict = _KEYWORDS
    if _CARD_DIGITS in data.translate(_DIGITS_TO_0, b" -") and _has_card(data):
        return _CARDS
    if verdict and precheck.stems_data.find_matches_as_indexes(low):
        return _STEMS  # a stem a keyword's match hid (UUIDs aside: the slow way is safe)
    return verdict


def _has_card(data: bytes) -> bool:
    """Tell whether JSON text holds a card number (an escape before it counts as a blank)."""
    text = _JSON_ESCAPE_RE.sub(" ", data.decode(errors="replace"))
    return any(_mask_card(m[0]) is not None for m in _CARD_RE.finditer(text))


def redact_sensitive(
    value: object, extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> object:
    """Return JSON-like data with secrets redacted (the value itself when it has none);
    `cards=False` when the pre-check saw no card number in it."""
    return _redact(value, extra_keys, 0, cards)


# Types as tuples: `dict | list | tuple` in a call builds a union object each time, which
# cost more than the rest of a scalar's visit.
_SEQUENCES = (list, tuple)
# The scalars no rule changes (an int may be a card number): a mapping's values of these
# types are kept without a call.
_KEPT_SCALARS = frozenset((bool, float, type(None)))


def _redact(value: object, extra_keys: frozenset[str], depth: int, cards: bool) -> object:
    if isinstance(value, str):  # redact_sensitive_in_string, without a call more per string
        low = value.lower() if value.isascii() else _lower(value)
        if not _may_hold(value, low, extra_keys, cards):
            return value
        return _redact_rules(value, low, extra_keys, cards, 0)
    # Deeper than any real event nests: replaced whole, so hostile nesting can neither
    # exhaust the stack nor carry a secret past the redaction.
    if isinstance(value, dict):
        return REDACTED if depth >= MAX_DEPTH else _redact_mapping(value, extra_keys, depth, cards)
    if isinstance(value, _SEQUENCES):
        return REDACTED if depth >= MAX_DEPTH else _redact_list(value, extra_keys, depth, cards)
    if cards and type(value) is int and _CARD_INT_MIN <= value < _CARD_INT_MAX:
        digits = str(value)
        # As in text, a card number starts with 2 to 6 (a timestamp in µs starts with 1).
        masked = _mask_card(digits) if digits[0] in _CARD_FIRST_DIGITS else None
        return value if masked is None else masked
    return value


_CARD_INT_MIN, _CARD_INT_MAX = 2 * 10**12, 7 * 10**18  # 13 to 19 digits, from 2 to 6
_CARD_FIRST_DIGITS = "23456"


def _redact_list(
    items: list[object] | tuple[object, ...], extra_keys: frozenset[str], depth: int, cards: bool
) -> object:
    """Redact every item, and the value of each pair or command-line flag the list holds."""
    out = [_redact(item, extra_keys, depth + 1, cards) for item in items]
    # A list of pairs ([["Authorization", "…"], ["Accept", "…"]]): each sensitive one goes.
    pairs = sum(1 for item in items if _is_pair_shape(item)) >= 2
    if pairs:
        for i, item in enumerate(items):
            if _is_pair_shape(item) and _secret_pair(item, extra_keys, strict=False):  # type: ignore[arg-type]
                out[i] = [item[0], REDACTED]  # type: ignore[index]
    elif len(items) == 2 and _secret_pair(items, extra_keys, strict=True):
        out[1] = REDACTED
    for i in range(len(items) - 1):
        # An argument list: ["pg_dump", "--password", "…"].
        flag = items[i]
        if isinstance(flag, str) and flag.startswith("-") and _FLAG_ITEM_RE.fullmatch(flag):
            if is_sensitive_key(flag.lstrip("-"), extra_keys) and items[i + 1] != REDACTED:
                out[i + 1] = REDACTED
    if all(new is old for new, old in zip(out, items, strict=True)):
        return items
    return tuple(out) if isinstance(items, tuple) else out


_FLAG_ITEM_RE = re.compile(r"--?[A-Za-z][\w.-]*")
# A value that reads as a field name ("email", "updated_at"): ["password", "email"] alone
# is more likely a list of field names than a pair (docs/redaction.md, false positives).
_FIELD_NAME_RE = re.compile(r"[a-z][a-z_]{0,39}")


def _is_pair_shape(item: object) -> bool:
    return isinstance(item, _SEQUENCES) and len(item) == 2 and isinstance(item[0], str)


def _secret_pair(
    pair: list[object] | tuple[object, ...], extra_keys: frozenset[str], *, strict: bool
) -> bool:
    """Tell whether a two-item list is a (sensitive name, value) pair."""
    name, value = pair
    if not isinstance(name, str) or value == REDACTED or not is_sensitive_key(name, extra_keys):
        return False
    return not (strict and isinstance(value, str) and _FIELD_NAME_RE.fullmatch(value))


_DIFF_FIELD_KEY = "field"
_DIFF_VALUE_KEYS = ("old", "new")
_PAIR_MAX_ITEMS = 8  # a name/value pair is a small mapping (a HAR entry adds a comment)
_NAME, _VALUE = 1, 2  # what a key is in a name/value pair, by its last word


def _pair_role(key: str) -> int:
    """What `key` is in a name/value pair (remembered for keys of ordinary length)."""
    return _pair_role_cached(key) if len(key) <= _CACHED_KEY_MAX_CHARS else _role(key)


def _role(key: str) -> int:
    """_NAME for "name", "Key", "ParameterKey", "attributeName"…; _VALUE for "value",
    "Value", "tagValue"…; else 0 (the words: PAIR_NAMES, PAIR_VALUES)."""
    words = key_words(key)
    if not words:
        return 0
    return _NAME if words[-1] in PAIR_NAMES else _VALUE if words[-1] in PAIR_VALUES else 0


_pair_role_cached = functools.lru_cache(maxsize=4096)(_role)


@functools.lru_cache(maxsize=4096)
def _pair_fields(keys: tuple[object, ...]) -> tuple[str, ...] | None:
    """The name fields of a mapping with these keys when it is name/value shaped (it has a
    value field), else None."""
    roles = [(key, _pair_role(key)) for key in keys if isinstance(key, str)]
    if not any(role == _VALUE for _, role in roles):
        return None
    return tuple(key for key, role in roles if role == _NAME)


def _pair_roles(mapping: dict[object, object], extra_keys: frozenset[str]) -> tuple[bool, bool]:
    """Whether a mapping is name/value shaped, and whether its name is sensitive."""
    if not 1 < len(mapping) <= _PAIR_MAX_ITEMS:
        return False, False
    names = _pair_fields(tuple(mapping))
    if names is None:
        return False, False
    secret = any(
        isinstance(item := mapping[name], str) and is_sensitive_key(item, extra_keys)
        for name in names
    )
    return True, secret


# What a mapping's walk needs of a key, remembered per set of extra keys (keys repeat from
# event to event: one lookup instead of a call per rule): whether its value goes whatever
# the mapping, whether it goes unless the mapping is a name/value pair (its key then holds
# the pair's name: {"key": "http.method", "value": …}), its role in a pair, and whether the
# pre-check lets the key's own text through (without card numbers, with them: a key can be
# a credential itself, {"ghp_…": true}), its last word, whether its text goes with its
# value (without card numbers, with them), whether it is sensitive at all (either of the
# first two: its value goes in a mapping that is no pair and no diff), and how many matches
# the scan of an encoded event finds in it (its JSON text, `"key"`; -1: not known).
_KeyFacts = tuple[bool, bool, int, bool, bool, str, bool, bool, bool, int]
_KEY_FACTS_SEEN: dict[str, _KeyFacts] = {}
_NOT_A_KEY: _KeyFacts = (False, False, 0, False, False, "", False, False, False, -1)  # no str


@functools.lru_cache(maxsize=64)
def _key_facts_cache(extra_keys: frozenset[str]) -> dict[str, _KeyFacts]:
    return {}


def _key_facts(key: object, extra_keys: frozenset[str], seen: dict[str, _KeyFacts]) -> _KeyFacts:
    if not isinstance(key, str):
        return _NOT_A_KEY
    sensitive = is_sensitive_key(key, extra_keys)
    role = _pair_role(key)
    names_only = (
        sensitive and role == _NAME and not _is_sensitive_key_cached(key, extra_keys, False)
    )
    low = _lower(key)
    words = key_words(key)
    holds = _may_hold(key, low, extra_keys, False), _may_hold(key, low, extra_keys, True)
    # Whether its text is redacted when its value goes (without cards, with them): a key that
    # is sensitive only read as ASCII (`toKen`) or with its escapes unescaped (`to\\u212aen`,
    # `see \\u0070assword=…`) is text that may hold a secret as written.
    escaped = "\\" in key
    otherwise = (escaped or not key.isascii()) and not _is_sensitive_key_as_read(
        key, extra_keys, True
    )
    facts = (
        sensitive and not names_only,
        names_only,
        role,
        *holds,
        words[-1] if words else "",
        otherwise and (escaped or holds[0]),
        otherwise and (escaped or holds[1]),
        sensitive,
        _matches_in_json(key, extra_keys),
    )
    if len(key) <= _CACHED_KEY_MAX_CHARS:
        if len(seen) >= _KEYS_REMEMBERED:
            seen.clear()  # a producer of endless distinct keys: start over
        seen[key] = facts
    return facts


def _redact_mapping(
    mapping: dict[object, object], extra_keys: frozenset[str], depth: int, cards: bool
) -> dict[object, object]:
    """Redact values under sensitive keys and recurse into the rest: the mapping itself when
    nothing changed, else a copy made at the first change (most values stay as they are)."""
    field = mapping.get(_DIFF_FIELD_KEY)
    # A change diff names the secret in "field" and carries it under "old"/"new".
    secret_diff = isinstance(field, str) and is_sensitive_key(field, extra_keys)
    # A name/value pair names it in "name" (or "Key", "ParameterKey", …) and carries it in
    # "value" (or "Value", "tagValue", …).
    pair_shaped, secret_pair = _pair_roles(mapping, extra_keys)
    plain = not (secret_diff or pair_shaped)  # a key's facts alone say whether its value goes
    seen: dict[Any, _KeyFacts] = _key_facts_cache(extra_keys) if extra_keys else _KEY_FACTS_SEEN
    holds = 4 if cards else 3  # the facts' index: whether the key's text may hold a secret
    hidden_text = 7 if cards else 6  # the facts' index: whether its text goes with its value
    out: dict[object, object] | None = None
    renamed: dict[object, str] | None = None  # the keys whose own text was redacted
    key: Any
    for key, item in mapping.items():
        facts = seen.get(key) or _key_facts(key, extra_keys, seen)
        if facts[8] if plain else _hidden(key, facts, pair_shaped, secret_diff, secret_pair):
            new: object = item if item == REDACTED else REDACTED  # redacted already: kept
            if facts[hidden_text]:
                # Sensitive only read as ASCII (`toKen`) or unescaped (`to\\u212aen`): its text
                # is read as any key's.
                renamed = renamed or {}
                renamed[key] = redact_sensitive_in_string(key, extra_keys, cards=cards)
        else:
            # _redact's first cases, without its call.
            if isinstance(item, str):
                low = item.lower() if item.isascii() else _lower(item)
                keep = not _may_hold(item, low, extra_keys, cards)
                new = item if keep else _redact_rules(item, low, extra_keys, cards, 0)
            elif type(item) in _KEPT_SCALARS or (not cards and type(item) is int):
                new = item
            else:
                new = _redact(item, extra_keys, depth + 1, cards)
            if facts[holds]:
                renamed = renamed or {}
                renamed[key] = redact_sensitive_in_string(key, extra_keys, cards=cards)
        if new is not item:
            if out is None:
                out = dict(mapping)
            out[key] = new
    if renamed and any(new is not key for key, new in renamed.items()):
        # Each key in its place, as redacted (two that read the same: the later's value).
        return {renamed.get(key, key): item for key, item in (out or mapping).items()}
    return mapping if out is None else out


def redact_keys_holding(
    mapping: object, matches: int, extra_keys: frozenset[str] = frozenset(), *, cards: bool
) -> object | None:
    """redact_sensitive of a mapping in whose JSON the scan of an encoded event found
    `matches` matches, when every one of them lies in the mapping's own keys: then no value
    holds one, so no rule can change a value (the pre-check lets nothing go that a rule would
    change), and only the values of sensitive keys go. None when a match lies elsewhere, or a
    key asks more (a pair's name, its own text redacted): the mapping is to be walked."""
    if type(mapping) is not dict:
        return None
    seen: dict[Any, _KeyFacts] = _key_facts_cache(extra_keys) if extra_keys else _KEY_FACTS_SEEN
    holds, hidden_text = (4, 7) if cards else (3, 6)  # the facts' indexes, as in the walk
    in_keys = 0
    out: dict[object, object] | None = None
    for key, item in mapping.items():
        facts = seen.get(key) or _key_facts(key, extra_keys, seen)
        if facts[1] or facts[9] < 0 or (facts[hidden_text] if facts[0] else facts[holds]):
            return None
        in_keys += facts[9]
        if facts[0] and item != REDACTED:
            if out is None:
                out = dict(mapping)
            out[key] = REDACTED
    if in_keys != matches:
        return None
    return mapping if out is None else out


def _matches_in_json(key: str, extra_keys: frozenset[str]) -> int:
    """How many matches the scan of an encoded event finds in `key`'s JSON text (-1: not known,
    without hyperscan or with a key whose JSON escapes a character)."""
    scanner = _precheck_for(extra_keys).scanner
    data = msgspec.json.encode(key)
    if scanner is None or b"\\" in data:
        return -1
    verdict, spans = scanner.matches(data)
    return -1 if verdict & _MARKS else len(spans)


def _hidden(
    key: object, facts: _KeyFacts, pair_shaped: bool, secret_diff: bool, secret_pair: bool
) -> bool:
    """Whether a key's value goes in a mapping that may be a name/value pair or a diff."""
    return (
        facts[0]
        or (facts[1] and not pair_shaped)
        or (secret_diff and key in _DIFF_VALUE_KEYS)
        or (secret_pair and facts[2] == _VALUE)
    )


def redact_sensitive_in_string(
    text: str, extra_keys: frozenset[str] = frozenset(), *, cards: bool = True, _decoded: int = 0
) -> str:
    """Return text with every credential the value rule knows redacted (see the module doc);
    `cards=False` when the pre-check saw no card number in it."""
    out = _redact_text(text, extra_keys, cards, _decoded)
    if "\\" in text and not _decoded:
        return _redact_escaped(text, out, extra_keys, cards, _UNESCAPE_MAX)
    return out


def _redact_text(text: str, extra_keys: frozenset[str], cards: bool, _decoded: int) -> str:
    low = _lower(text)
    if not _may_hold(text, low, extra_keys, cards):
        return text
    return _redact_rules(text, low, extra_keys, cards, _decoded)


# Escapes in text that is not decoded: JSON that is not JSON any more (a dead letter), a repr
# quoted in a message. What they spell is read too (`pass\u0077ord`, `pin\t…`,
# `\r\nAuthorization: …`, `auth\\\"=…`), up to _UNESCAPE_MAX levels (JSON in JSON); as for
# URL-encoded runs, a text that held a secret only its escapes spell is kept unescaped,
# redacted (_redact_escaped). A control character reads as a blank; a lone surrogate stays
# escaped.
_ESCAPE_RE = re.compile(
    r"\\(?:u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|u([0-9a-f]{4})|x([0-9a-f]{2})"
    r"|U([0-9a-f]{8})|([\"'\\/bfnrt]))",
    re.IGNORECASE,
)
_ESCAPED = {"b": " ", "f": " ", "n": "\n", "r": "\r", "t": "\t"}
_UNESCAPE_MAX = 3


def _unescape_one(match: re.Match[str]) -> str:
    high, code, byte, wide, char = match[1], match[3], match[4], match[5], match[6]
    if char is not None:
        return _ESCAPED.get(char, char)
    if high is not None:
        point = 0x10000 + ((int(high, 16) - 0xD800) << 10) + int(match[2], 16) - 0xDC00
    else:
        point = int(code or byte or wide, 16)
        if 0xD800 <= point < 0xE000 or point > 0x10FFFF:
            return match[0]
    if point < 0x20 or 0x7F <= point < 0xA0:
        return "\n" if point == 0x0A else "\t" if point == 0x09 else "\r" if point == 0x0D else " "
    return chr(point)


_RUN_OF_ALNUM_RE = re.compile(r"[^\W_]+")
_REDACTED_RUNS = frozenset(_RUN_OF_ALNUM_RE.findall(REDACTED))


def _redact_run(taken: set[str], match: re.Match[str]) -> str:
    return REDACTED if match[0] in taken else match[0]


def _redact_escaped(
    text: str, out: str, extra_keys: frozenset[str], cards: bool, levels: int
) -> str:
    """`out` (text redacted); or, when the rules over text unescaped take away runs of
    letters and digits that `out` kept, `out` unescaped with those runs redacted too (what
    either reading took away is gone). `levels` of escapes are read."""
    return _escape_reading(text, out, extra_keys, cards, levels)[0]


def _escape_reading(
    text: str, out: str, extra_keys: frozenset[str], cards: bool, levels: int
) -> tuple[str, set[str]]:
    """_redact_escaped's answer, and the runs of letters and digits it took away (none:
    `out` as it is). Level by level: a level whose rules take runs away has them redacted,
    and the reading goes on from there, as deeper escapes may hide more."""
    view, shown, kept = text, out, out
    taken_all: set[str] = set()
    for _ in range(levels):
        unescaped = _ESCAPE_RE.sub(_unescape_one, view)
        if unescaped == view:
            break
        view, shown = unescaped, _ESCAPE_RE.sub(_unescape_one, shown)
        redacted = _redact_text(view, extra_keys, cards, 0)
        taken = set(_RUN_OF_ALNUM_RE.findall(shown)) - set(_RUN_OF_ALNUM_RE.findall(redacted))
        taken -= _REDACTED_RUNS
        if taken:
            shown = _RUN_OF_ALNUM_RE.sub(functools.partial(_redact_run, taken), shown)
            kept = shown
            taken_all |= taken
    return kept, taken_all


def redact_escapes(value: object, extra_keys: frozenset[str] = frozenset()) -> object:
    """JSON-like data the rules redacted already, with what the escapes of its strings spell
    read too (the value itself when that takes nothing away). For decoded events whose
    strings hold escapes as written (`{"to\\u212aen": "…"}`: JSON written by hand inside
    a string): a run the reading takes away is redacted where it stands as written; when
    one is spelled with an escape itself, the string is kept as _redact_escaped keeps
    undecoded text (unescaped, redacted). Cards are looked for: an escape can hide one."""
    return _redact_escapes(value, extra_keys, 0)


def _redact_escapes(value: object, extra_keys: frozenset[str], depth: int) -> object:
    if isinstance(value, str):
        return redact_escapes_as_written(value, extra_keys) if "\\" in value else value
    if depth >= MAX_DEPTH:
        return value  # the rules replaced anything deeper
    if isinstance(value, dict):
        out = {key: _redact_escapes(item, extra_keys, depth + 1) for key, item in value.items()}
        changed = any(out[key] is not item for key, item in value.items())
        return out if changed else value
    if isinstance(value, _SEQUENCES):
        items = [_redact_escapes(item, extra_keys, depth + 1) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    return value


def redact_escapes_as_written(text: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """redact_escapes of one string (text the rules redacted already)."""
    shown, taken = _escape_reading(text, text, extra_keys, True, _UNESCAPE_MAX)
    if not taken:
        return text
    written = _RUN_OF_ALNUM_RE.sub(functools.partial(_redact_run, taken), text)
    if (
        written != text
        and not _escape_reading(written, written, extra_keys, True, _UNESCAPE_MAX)[1]
    ):
        return written
    return shown


def redact_matched(
    text: str, extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> str:
    """redact_sensitive_in_string of text a pre-check let through already (the rules alone:
    a rule finds nothing the pre-check would have let go)."""
    low = text.lower() if text.isascii() else _lower(text)
    return _redact_rules(text, low, extra_keys, cards, 0)


def redact_strings(
    texts: list[str], extra_keys: frozenset[str] = frozenset(), *, cards: bool = True
) -> list[str]:
    """redact_sensitive_in_string of each of `texts` (each the same object when it holds
    nothing), after one pre-check over all of them (strings_needing_rules)."""
    flagged = strings_needing_rules(texts, extra_keys, cards=cards)
    if not flagged:
        return texts
    out = list(texts)
    for index in flagged:
        text = texts[index]
        # The pre-check passed it: the rules decide (what they leave stays the same object).
        out[index] = _redact_rules(text, _lower(text), extra_keys, cards, 0)
    return out


def _redact_rules(
    text: str, low: str, extra_keys: frozenset[str], cards: bool, _decoded: int
) -> str:
    """Every rule of the value rule on `text` (`low`: its lowercase), whatever the
    pre-check would say: a rule finds nothing the pre-check would have let go."""
    original = text
    if "field" in low and _names_secret_field(text, extra_keys):
        # A change diff as text (a payload that is not JSON): {"field": "password", "old": …}.
        # Which "old"/"new" belong to it is unknowable in broken JSON, so every one goes.
        extra_keys = extra_keys | _DIFF_VALUE_KEY_SET
    # Each rule below runs only when what it needs is in the text (cheap `in` tests).
    text = _redact_tokens(text, low)
    if "-----" in text:
        text = _PEM_RE.sub(REDACTED, text)
        # A card number glued to a PEM line (`-----END … KEY-----3782…`) follows a dash, where
        # the pre-check looks for none: the card rule runs.
        cards = True
    if "://" in text:
        text = _redact_url_passwords(text)
    # A name/value pair in text needs a quoted name and a pair value word (redacting only
    # removes some).
    pair_hint = (
        ("," in text or "=" in text) and ('"' in text or "'" in text) and _has_pair_value_word(low)
    )
    if pair_hint:
        # Before the key rule, which may redact the name ("Key": "api_token") first.
        text = _redact_value_before_name(text, extra_keys)
    if "=" in text or ":" in text:
        text = _redact_pairs(text, extra_keys)
    if "://" in text:
        # Redacting a pair value can splice a URL password onto its "@": look again.
        text = _redact_url_passwords(text)
    if "%3" in text:
        text = _ENCODED_PAIR_RE.sub(lambda m: _redact_encoded_pair(m, extra_keys), text)
    if "bearer" in low or "basic" in low:
        text = _BARE_AUTH_RE.sub(_redact_bare_auth, text)
    if "-" in text or "," in text or pair_hint or "<" in text or "\n" in text or "\\" in text:
        text = _redact_text_pairs(text, extra_keys, pair_hint)
    if "%" in text and _decoded < _DECODE_MAX:
        text = _RUN_RE.sub(lambda m: _redact_encoded_run(m, extra_keys, _decoded), text)
    if cards and len(text) >= _CARD_MIN_CHARS and _CARD_QUICK_RE.search(text) is not None:
        text = _CARD_RE.sub(_redact_card, text)
    return original if text == original else text


def _redact_tokens(text: str, low: str) -> str:
    """Replace every credential a token rule of the rule data finds (`low`: text.lower())."""
    spans = token_spans(text, low)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end in spans:
        out += (text[pos:start], REDACTED)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _redact_text_pairs(text: str, extra_keys: frozenset[str], pair_hint: bool) -> str:
    """Pairs whose name and value stand apart: flags, quoted pairs, XML, YAML lists
    (`pair_hint`: the text holds a pair value word, see _has_pair_value_word). Each needs
    one of "-", ",", "<", a line break (maybe escaped) or the hint."""
    # A flag starts the text or follows a blank (`in` tests: no generator, no regex scan).
    if "-" in text and (
        text.startswith("-") or " -" in text or "\t-" in text or "\n-" in text or "\r-" in text
    ):
        text = _redact_after(text, _FLAG_RE, extra_keys)
    if "," in text:
        text = _redact_after(text, _QUOTED_PAIR_RE, extra_keys)
    if pair_hint:
        text = _redact_after(text, _NAME_VALUE_RE, extra_keys)
    if "</" in text:
        text = _XML_RE.sub(lambda m: _redact_xml(m, extra_keys), text)
    if "\n" in text and ":" in text:
        text = _redact_yaml_blocks(text, extra_keys)
    if "\\n" in text and ":" in text:
        text = _redact_yaml_blocks(text, extra_keys, "\\n")
    return text


# A PEM private key, also one cut short (no END line): a structure, kept beside the formats.
_PEM_RE = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",  # to the end when it has no END line
    re.DOTALL,
)
# Scanning patterns open with a lookbehind so a long run of word characters is tried once,
# not once per start position; no quantifier is nested inside another.
# The password may hold "/", "?", "#" or "@" (unencoded, as people write them): it ends at
# the "@" after which the host holds none; a port and a path ("https://h:8080/a/x@y") is no
# password. The expression finds the scheme and user; the password's end is looked for by
# hand (_url_password_end): a lazy scan to the "@" retried from every "scheme://user:" of a
# run was quadratic (22 s of CPU for 64 KiB of "a://b:").
_URL_HEAD_RE = re.compile(r"(?<![\w+.-])[a-z][a-z0-9+.-]*://[^\s:@/?#\[\]\"'<>]*:", re.IGNORECASE)
_URL_PORT_RE = re.compile(r"\d*[/?#]")  # no password: a port, then a path
_URL_MARK_RE = re.compile(r"[@/?#\s\"'<>]")  # what ends a password, or its run
# Only the key and separator are consumed, so a non-sensitive value stays searchable
# (e.g. redirect=https://x/cb?access_token=...). The key is taken whole (possessive: no
# shorter run could be followed by a separator), which halves the scan. A backslash may stand
# before the separator (`DB_PASSWORD\=…` in a shell or a .properties file), and a second
# quote after the key's (`"\"password\"": …`, a key that holds its own quotes). Symbols
# (arrows, dingbats, emoji, their joiners, "*") stand apart like blanks (`🔒password🔒: …`,
# `password*: …`), and so do the notes forms and docs put after a name: a few words in
# brackets, a number after "#" (`password (new): …`, `password [required]: …`, `token #1: …`).
# Only before the separator: `see password (new) policy` holds no pair.
_KEY_SYMBOL = "[ \t\u2190-\u2bff\ufe0f\u200d\U0001f000-\U0001faff*]"
_KEY_NOTE_WORDS = r"[\w ]{1,20}"
# ("[REDACTED]" is no note: a value redacted before a colon names nothing.)
_KEY_NOTE = rf"\({_KEY_NOTE_WORDS}\)|\[(?!REDACTED\]){_KEY_NOTE_WORDS}\]|#\d{{1,4}}"
_KEY_GAP = rf"(?:{_KEY_SYMBOL}|{_KEY_NOTE})"
_KEY_RE = re.compile(
    r"(?<![\w.-])(?P<key>[\w.-]++)(?P<kq>\\?[\"'](?:\\?[\"'])?)?"
    + _KEY_GAP
    + r"*\\?(?P<sep>[:=])[ \t]*"
)
# _KEY_RE's matches, found from each separator back (_key_matches): the same expression,
# reversed, read on the reversed text after the separator.
_KEY_NOTE_BACK = rf"\){_KEY_NOTE_WORDS}\(|\](?!DETCADER\[){_KEY_NOTE_WORDS}\[|\d{{1,4}}#"
_KEY_GAP_BACK = rf"(?:{_KEY_SYMBOL}|{_KEY_NOTE_BACK})"
_KEY_BEFORE_RE = re.compile(
    r"\\?" + _KEY_GAP_BACK + r"*+(?P<qk>[\"']\\?(?:[\"']\\?)?)?(?P<yek>[\w.-]++)"
)
_BLANKS_RE = re.compile(r"[ \t]*")
_BLANKS = (" ", "\t")


def _separators(text: str) -> list[int]:
    """The indexes of the ":" and "=" of text, in order (found by str.find: a regex search
    costs an attempt per character)."""
    found = []
    for sep in ":=":
        index = text.find(sep)
        while index >= 0:
            found.append(index)
            index = text.find(sep, index + 1)
    found.sort()
    return found


def _key_matches(text: str) -> list[tuple[int, str, str, int]]:
    """What _KEY_RE.finditer(text) finds: (start, key, its quote, the separator's index).
    _KEY_RE is tried at every character (a regex attempt each: most of a pair scan's
    cost); a key is a whole run of key characters that only a quote and blanks part from
    its separator, so it is read back from each separator instead. No key character is
    between a separator and its value: the matches never overlap, as finditer's."""
    back = text[::-1]
    size = len(text)
    found = []
    for index in _separators(text):
        key = _KEY_BEFORE_RE.match(back, size - index)
        if key is not None:
            start = size - key.end()
            quote = key["qk"]
            key_end = size - key.start("yek")
            found.append((start, text[start:key_end], quote[::-1] if quote else "", index))
    return found


_AUTH_SCHEME_RE = re.compile(r"(?:bearer|basic|digest|token|negotiate)[ \t]+", re.IGNORECASE)
_QUOTED = (
    r"(?P<q>[\"'])(?:(?!(?P=q))[^\\\r\n]|\\.)*(?P=q)?"
    # JSON that was itself JSON-encoded into a string: {\"password\": \"x\"}.
    r"|(?P<eq>\\[\"'])(?:[^\\\r\n]|\\[^\"'\r\n])*(?:\\[\"'])?"
)
_STOP = r"\s&,;\"'\])}"
_VALUE_RE = re.compile(
    "|".join(
        (
            re.escape(REDACTED),  # first, so redacting twice changes nothing
            _QUOTED,
            # The whole array, so no recovery code leaks (an item redacted already included).
            r"\[(?:[^\[\]]|" + re.escape(REDACTED) + r")*\]",
            r"\{[^{}]*\}",  # nested objects fall back to their own keys
            rf"[^{_STOP}\[{{][^{_STOP}]*",
        )
    )
)
# A Cookie header holds many name=value pairs separated by "; ", so take the rest of the line.
_COOKIE_VALUE_RE = re.compile(_QUOTED + r"|[^\r\n\"'\\]*[^\s\"'\\]")
# A pair inside a URL-encoded URL (redirect=https%3A%2F%2Fx%2F%3Ftoken%3Dabc%26n%3D1).
_ENCODED_PAIR_RE = re.compile(r"(?<![\w.-])(?P<key>[\w.-]++)%3[dD](?P<value>(?:(?!%26)[^\s&\"'])+)")
_BARE_AUTH_RE = re.compile(
    r"(?<![\w-])(?P<scheme>bearer|basic)(?P<gap>[ \t]+)(?P<cred>[\w.~+/-]+=*)", re.IGNORECASE
)
_CREDENTIAL_MARKS = frozenset("0123456789._~+/=")
_CREDENTIAL_MIN_PLAIN_LEN = 20

_DIFF_VALUE_KEY_SET = frozenset(_DIFF_VALUE_KEYS)
_DIFF_FIELD_RE = re.compile(
    r"(?<![\w.-])field\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?(?P<name>[\w.-]+)", re.IGNORECASE
)


def _names_secret_field(text: str, extra_keys: frozenset[str]) -> bool:
    """Tell whether text holds a change diff whose "field" names a secret."""
    if "field" not in text.lower():
        return False
    return any(is_sensitive_key(m["name"], extra_keys) for m in _DIFF_FIELD_RE.finditer(text))


def _redact_url_passwords(text: str) -> str:
    """Replace the password in scheme://user:password@host URLs."""
    out: list[str] = []
    pos = 0
    no_end_before = -1  # the run of the last head that found no "@": later heads need no look
    head = _URL_HEAD_RE.search(text)
    while head is not None:
        start = head.end()
        at = -1
        if start >= no_end_before and _URL_PORT_RE.match(text, start) is None:
            at, stop = _url_password_end(text, start)
            if at < 0:
                no_end_before = stop
        if at < 0:
            head = _URL_HEAD_RE.search(text, head.start() + 1)
            continue
        out += (text[pos:start], REDACTED, "@")
        pos = at + 1
        head = _URL_HEAD_RE.search(text, pos)
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _url_password_end(text: str, start: int) -> tuple[int, int]:
    """Where a password from `start` ends: the first "@" of its run (up to a blank, a quote,
    "<" or ">") after which no other "@" comes before a "/", "?", "#" or the run's end (the
    host holds none), -1 when there is none; and where the scan stopped (the run's end then)."""
    at = -1
    for mark in _URL_MARK_RE.finditer(text, start):
        char = mark[0]
        if char == "@":
            at = mark.start()  # an "@" before it would have this one in its host
        elif at >= 0 or char not in "/?#":
            return at, mark.start()
    return at, len(text)


def _redact_pairs(text: str, extra_keys: frozenset[str]) -> str:
    """Replace the value of every key=value / key: value pair whose key is sensitive."""
    out: list[str] = []
    pos = 0
    seen = _key_facts_cache(extra_keys) if extra_keys else _KEY_FACTS_SEEN
    for key_start, key, key_quote, sep in _key_matches(text):
        facts = seen.get(key) or _key_facts(key, extra_keys, seen)
        # A match inside a value that was already redacted must not be spliced again.
        if key_start < pos or not (facts[0] or facts[1]):  # not a sensitive key
            continue
        start = sep + 1
        if text[start : start + 1] in _BLANKS:  # (most values follow at once: no regex)
            start = _BLANKS_RE.match(text, start).end()  # type: ignore[union-attr]
        last = facts[5]
        if last == "authorization":
            scheme = _AUTH_SCHEME_RE.match(text, start)
            start = scheme.end() if scheme else start
        if text.startswith(("\\n", "\\r"), start):
            continue  # an escaped line break: a YAML block follows (_redact_yaml_blocks)
        cookie_header = last == "cookie" and text[sep] == ":"
        value = (_COOKIE_VALUE_RE if cookie_header else _VALUE_RE).match(text, start)
        if value is None:
            continue
        if facts[1] and _PAIR_VALUE_NEXT_RE.match(text, value.end()):
            continue  # "key": "api_token", "value": … names the secret: _NAME_VALUE_RE's
        # Reuse the value's quoting, else the key's, so JSON and repr output stay well-formed.
        q, eq = value.group("q", "eq")
        quote = q or eq or key_quote
        out += (text[pos:start], quote, REDACTED, quote)
        pos = value.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _redact_after(text: str, pattern: re.Pattern[str], extra_keys: frozenset[str]) -> str:
    """Replace the value that follows each match of `pattern` whose "key" is sensitive (and,
    for _NAME_VALUE_RE, whose "nm" and "vn" are a pair's name and value fields)."""
    out: list[str] = []
    pos = 0
    pairs = pattern is _NAME_VALUE_RE
    for match in pattern.finditer(text):
        if match.start() < pos or not is_sensitive_key(match["key"], extra_keys):
            continue
        if pairs and (_pair_role(match["nm"]) != _NAME or _pair_role(match["vn"]) != _VALUE):
            continue
        value = _VALUE_RE.match(text, match.end())
        if value is None or value.end() == match.end():
            continue
        quote = value["q"] or value["eq"] or ""
        out += (text[pos : match.end()], quote, REDACTED, quote)
        pos = value.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


# `--password SECRET`, `-token SECRET` (the `=` form is a pair of _KEY_RE); a flag starts
# the text or follows a blank.
_FLAG_RE = re.compile(r"(?<![\w-])--?(?P<key>[A-Za-z][\w.-]*)[ \t]+(?=[^\s-])")
# A quoted name opening a list, a comma, a value: header tuples as text ('authorization',
# '…'); and a quoted flag anywhere in a list: argv lists ("--password", "…").
_QUOTED_PAIR_RE = re.compile(
    r"(?:[\[(][ \t]*(?P<kq>\\?[\"'])(?=[\w.-]+(?P=kq))|(?P<fq>\\?[\"'])(?=--?[A-Za-z]))"
    r"(?P<key>[\w.-]+)(?:(?P=kq)|(?P=fq))[ \t]*,[ \t]*"
)
# A name/value pair as text: "name": "DB_PASSWORD", "value": … (k8s env, HAR, AWS tags).
# Also as XML attributes (<add key="ApiKey" value="…"/>) and with a prefix (ParameterKey):
# "nm" must be a pair name and "vn" a pair value (_pair_role), "key" a sensitive name.
_NAME_VALUE_RE = re.compile(
    r"(?<![\w.-])(?P<nq>\\?[\"']?)(?P<nm>[\w.-]{1,60})(?P=nq)[ \t]*[:=][ \t]*"
    r"(?P<kq>\\?[\"'])(?P<key>[^\"'\\\n]{1,100})(?P=kq)[ \t]*[,;]?[ \t]*"
    r"(?P<vq>\\?[\"']?)(?P<vn>[\w.-]{1,60})(?P=vq)[ \t]*[:=][ \t]*"
)
# The same pair with its value first ("value": "…", "name": "DB_PASSWORD").
_PAIR_FIELD_RE = re.compile(
    r"(?<![\w.-])(?P<q>\\?[\"']?)(?P<field>[\w.-]{1,60})(?P=q)[ \t]*[:=][ \t]*"
)
_NAME_AFTER_RE = re.compile(
    r"[ \t]*[,;]?[ \t]*(?P<nq>\\?[\"']?)(?P<nm>[\w.-]{1,60})(?P=nq)[ \t]*[:=][ \t]*"
    r"(?P<kq>\\?[\"'])(?P<key>[^\"'\\\n]{1,100})(?P=kq)"
)


def _redact_value_before_name(text: str, extra_keys: frozenset[str]) -> str:
    """Replace the value of a pair written value first, whose name is sensitive."""
    out: list[str] = []
    pos = 0
    for field in _PAIR_FIELD_RE.finditer(text):
        if field.start() < pos or _pair_role(field["field"]) != _VALUE:
            continue
        value = _VALUE_RE.match(text, field.end())
        if value is None or value.end() == field.end() or value[0] == REDACTED:
            continue
        name = _NAME_AFTER_RE.match(text, value.end())
        if (
            name is None
            or _pair_role(name["nm"]) != _NAME
            or not is_sensitive_key(name["key"], extra_keys)
        ):
            continue
        quote = value["q"] or value["eq"] or ""
        out += (text[pos : field.end()], quote, REDACTED, quote)
        pos = value.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


# A pair value word: no _NAME_VALUE_RE match without one. Substring tests of lowercased
# text (a regex alternation in any case costs more than all the rules it spares): the words
# no other contains ("val" stands for "value", "values", "string_value"), a one-letter word
# as a word.
_PAIR_HINT_WORDS = tuple(
    sorted(
        word
        for word in PAIR_VALUES
        if len(word) > 1 and not any(o != word and len(o) > 1 and o in word for o in PAIR_VALUES)
    )
)
_PAIR_HINT_LETTERS = tuple(sorted(word for word in PAIR_VALUES if len(word) == 1))
_PAIR_HINT_LETTER_RE = re.compile("|".join(rf"\b{w}\b" for w in _PAIR_HINT_LETTERS) or "(?!)")


def _has_pair_value_word(low: str) -> bool:
    """Tell whether lowercased text holds a pair value word (PAIR_VALUES)."""
    for word in _PAIR_HINT_WORDS:
        if word in low:
            return True
    for letter in _PAIR_HINT_LETTERS:  # (no generator: this runs for most texts with rules)
        if letter in low:
            return _PAIR_HINT_LETTER_RE.search(low) is not None
    return False


_PAIR_VALUE_NEXT_RE = re.compile(
    r"\\?[\"']?[ \t]*[,;]?[ \t]*(?P<vq>\\?[\"']?)[\w.-]*?(?:"
    + "|".join(sorted(PAIR_VALUES))
    + r")(?P=vq)[ \t]*[:=]",
    re.IGNORECASE,
)
# An XML element whose (local) name is sensitive: <wsse:Password …>…</wsse:Password>.
_XML_RE = re.compile(
    r"<(?P<tag>[A-Za-z_][\w:.-]*)(?:[ \t\r\n][^<>]*)?>"
    r"(?P<value><!\[CDATA\[[\s\S]*?\]\]>|[^<]*)</(?P=tag)[ \t\r\n]*>"
)
# YAML: a sensitive key with nothing after its colon holds the block below it.
_YAML_KEY_RE = re.compile(r"(?P<indent>[ \t]*)(?:-[ \t]+)?(?P<key>[\w.-]+)[ \t]*:[ \t]*(?:#.*)?")
_YAML_ITEM_RE = re.compile(r"(?P<head>[ \t]*(?:-[ \t]+)?(?:[\w.-]+[ \t]*:[ \t]+)?)(?P<value>\S.*)")
# The same inside a JSON string, where a line ends at an escaped "\n" and the string at '"'
# (its first line starts after the string's opening quote).
_YAML_ITEM_ESCAPED_RE = re.compile(
    r"(?P<head>[ \t]*(?:-[ \t]+)?(?:[\w.-]+[ \t]*:[ \t]+)?)(?P<value>[^\s\\\"][^\\\"]*)(?P<rest>.*)"
)


def _redact_xml(match: re.Match[str], extra_keys: frozenset[str]) -> str:
    value = match["value"]
    local = match["tag"].rpartition(":")[2]
    if not value.strip() or value == REDACTED or not is_sensitive_key(local, extra_keys):
        return match[0]
    whole, start = match[0], match.start()
    return whole[: match.start("value") - start] + REDACTED + whole[match.end("value") - start :]


def _redact_yaml_blocks(text: str, extra_keys: frozenset[str], newline: str = "\n") -> str:
    """Replace every item of a YAML block (a list, a mapping) under a sensitive key."""
    escaped = newline != "\n"
    item_re = _YAML_ITEM_ESCAPED_RE if escaped else _YAML_ITEM_RE
    lines = text.split(newline)
    changed = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r")
        head = _YAML_KEY_RE.fullmatch(line[line.rfind('"') + 1 :] if escaped else line)
        i += 1
        if head is None or not is_sensitive_key(head["key"], extra_keys):
            continue
        indent = len(head["indent"])
        while i < len(lines):
            line = lines[i].rstrip("\r")
            body = line.lstrip(" \t")
            depth = len(line) - len(body)
            if body and not (depth > indent or (depth == indent and body.startswith("- "))):
                break
            item = item_re.fullmatch(line)
            if item is not None and item["value"] != REDACTED:
                rest = item.groupdict().get("rest") or ""
                lines[i] = item["head"] + REDACTED + rest + lines[i][len(line) :]
                changed = True
            i += 1
    return newline.join(lines) if changed else text


# Runs of text (between spaces and quotes) that hold a URL-encoded "%" or "://": decoded and
# redacted as plain text, up to _DECODE_MAX times (double encoding); a run that held a
# secret is kept decoded, redacted.
_RUN_RE = re.compile(r"(?<![^\s\"'<>])[^\s\"'<>]+")
_ENCODED_MARK_RE = re.compile(r"%(?:25[0-9A-Fa-f]{2}|3[aA]%2[fF]%2[fF]|40)")
_DECODE_MAX = 2


def _redact_encoded_run(match: re.Match[str], extra_keys: frozenset[str], decoded: int) -> str:
    run = match[0]
    if _ENCODED_MARK_RE.search(run) is None:
        return run
    plain = unquote(run)
    redacted = redact_sensitive_in_string(plain, extra_keys, _decoded=decoded + 1)
    return run if redacted == plain else redacted


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


_CARD_KEEP = 4  # digits left at the end of a masked card number


def _mask_card(text: str) -> str | None:
    """A Luhn-valid card number with all but its last four digits masked; None otherwise."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return None
    hide = len(digits) - _CARD_KEEP
    out: list[str] = []
    for ch in text:
        if ch.isdigit():
            out.append("*" if hide > 0 else ch)
            hide -= 1
        else:
            out.append(ch)
    return "".join(out)


def _redact_card(match: re.Match[str]) -> str:
    masked = _mask_card(match[0])
    return match[0] if masked is None else masked


def _redact_encoded_pair(match: re.Match[str], extra_keys: frozenset[str]) -> str:
    if match["value"] == REDACTED or not is_sensitive_key(match["key"], extra_keys):
        return match[0]
    return match["key"] + "%3D" + REDACTED


def _redact_bare_auth(match: re.Match[str]) -> str:
    """Redact the credential after a bare Bearer/Basic scheme when it looks like one."""
    cred = match["cred"]
    # Prose like "basic authentication" must survive; real tokens carry digits, symbols,
    # inner capitals or are too long to be a word.
    plain = _CREDENTIAL_MARKS.isdisjoint(cred) and not any(ch.isupper() for ch in cred[1:])
    if plain and len(cred) < _CREDENTIAL_MIN_PLAIN_LEN:
        return match[0]
    return match["scheme"] + match["gap"] + REDACTED
