"""The redaction rule data (service/redaction_rules.json) and its credential-format rules.

The JSON file is the one source of the rules for every producer (this package, the Node
client): the words that make a key sensitive, the names of the fields that make a mapping a
name/value pair, and the credential formats as regular expressions (gitleaks' maintained
rule set plus auditq's own; `python -m service.redaction_refresh` rebuilds the first part).
Here the formats are compiled once and applied keyword-first: one Aho-Corasick automaton
over every rule's keywords tells which few rules can match a text at all (gitleaks' own
design); of those, a rule runs only where the strings its expression requires occur
(`required_strings`). docs/redaction.md describes what is caught and what it costs.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

# Python's own regex parser, for the strings a rule requires (required_strings): no public
# interface gives an expression's parse tree.
from re import _constants, _parser  # type: ignore[attr-defined]
from typing import Any

import ahocorasick_rs

RULES_FILE = "redaction_rules.json"
DATA: dict[str, Any] = json.loads(
    importlib.resources.files("service").joinpath(RULES_FILE).read_text(encoding="utf-8")
)
KEYS: dict[str, Any] = DATA["keys"]


@dataclass(frozen=True, slots=True)
class _Allow:
    regexes: tuple[re.Pattern[str], ...]
    target: str  # "secret", "match" or "line"
    stopwords: tuple[str, ...]
    every: bool  # condition AND: the regexes and the stopwords must all admit it

    def admits(self, secret: str, match: re.Match[str]) -> bool:
        if self.target == "match":
            target = match[0]
        elif self.target == "line":
            text, start, end = match.string, match.start(), match.end()
            target = text[text.rfind("\n", 0, start) + 1 : _line_end(text, end)]
        else:
            target = secret
        checks = []
        if self.regexes:
            checks.append(any(r.search(target) for r in self.regexes))
        if self.stopwords:
            low = secret.lower()
            checks.append(any(word in low for word in self.stopwords))
        return all(checks) if self.every else any(checks)


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _allow(entry: dict[str, Any]) -> _Allow:
    return _Allow(
        regexes=tuple(re.compile(r, re.ASCII) for r in entry.get("regexes", ())),
        target=entry.get("target", "secret"),
        stopwords=tuple(entry.get("stopwords", ())),
        every=entry.get("condition", "OR") == "AND",
    )


@dataclass(frozen=True, slots=True)
class TokenRule:
    """One credential format: where its secret is in a match, and what is not one."""

    id: str
    regex: re.Pattern[str]
    group: int
    entropy: float
    allow: tuple[_Allow, ...]
    # Lowercase strings every match holds (read from the expression, `required_strings`):
    # text whose lowercase lacks one is not searched, which an expression without a
    # literal start (tried at every character) would cost.
    required: tuple[str, ...] = ()

    def may_match(self, lowered: str) -> bool:
        """False when no match can be in the text whose lowercase is `lowered`."""
        for needed in self.required:
            if needed not in lowered:
                return False
        return True

    def secrets(self, text: str) -> Iterator[tuple[int, int]]:
        """The spans of the secrets this rule finds in `text`."""
        for match in self.regex.finditer(text):
            start, end = self._span(match)
            if start == end:
                continue
            secret = text[start:end]
            if self.entropy and shannon_entropy(secret) < self.entropy:
                continue
            if any(a.admits(secret, match) for a in self.allow):
                continue
            yield start, end

    def _span(self, match: re.Match[str]) -> tuple[int, int]:
        if self.group:
            return match.span(self.group)
        for group in range(1, (self.regex.groups or 0) + 1):
            if match.start(group) >= 0 and match.start(group) != match.end(group):
                return match.span(group)
        return match.span()


def shannon_entropy(text: str) -> float:
    """Bits per character of `text` (gitleaks' entropy floor is in these units)."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _rule(entry: dict[str, Any], shared: tuple[_Allow, ...]) -> TokenRule:
    return TokenRule(
        id=entry["id"],
        regex=re.compile(entry["regex"], re.ASCII),
        group=int(entry.get("group", 0)),
        entropy=float(entry.get("entropy", 0.0)),
        allow=(*(_allow(a) for a in entry.get("allow", ())), *shared),
        required=required_strings(entry["regex"]),
    )


_REQUIRED_MIN_CHARS = 3  # shorter strings are in too much text to spare a search


def required_strings(regex: str) -> tuple[str, ...]:
    """Lowercase strings that every match of `regex` (compiled with re.ASCII) holds, in
    any case: its runs of literal characters (a class of one letter in both cases, `[kK]`,
    counts as one) outside optional parts; of alternatives, those all of them hold.
    Read from the parse tree of Python's own regex parser (no public interface gives
    it): when that parser changes shape, no string is required (every rule is searched,
    as before)."""
    try:
        found = _required_in(list(_parser.parse(regex, re.ASCII)))
    except Exception:  # any surprise of a private module: nothing required, as before
        return ()
    return tuple(sorted(s for s in found if len(s) >= _REQUIRED_MIN_CHARS))


def _required_in(items: list[tuple[Any, Any]]) -> set[str]:
    """The strings every match of a parsed sequence holds."""
    c = _constants
    found: set[str] = set()
    run = ""
    for op, av in items:
        char = _literal_char(op, av, c)
        if char is not None:
            run += char
            continue
        if run:
            found.add(run)
            run = ""
        if op is c.SUBPATTERN:
            found |= _required_in(list(av[-1]))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            found |= _required_in(list(av[2]))
        elif op is c.ATOMIC_GROUP:
            found |= _required_in(list(av))
        elif op is c.BRANCH:
            branches = [_required_in(list(branch)) for branch in av[1]]
            found |= set.intersection(*branches) if branches else set()
    if run:
        found.add(run)
    return found


def _literal_char(op: Any, av: Any, c: Any) -> str | None:
    """The lowercase ASCII character a parsed item matches (in either case), else None."""
    if op is c.LITERAL:
        chars = {chr(av)}
    elif op is c.IN and all(kind is c.LITERAL for kind, _ in av):
        chars = {chr(value) for _, value in av}
    else:
        return None
    lowered = {char.lower() for char in chars}
    if len(lowered) != 1:
        return None
    char = lowered.pop()
    # Each of `chars` must be that letter in one case or the other, and ASCII.
    if not char.isascii() or any(ch.lower() != char or not ch.isascii() for ch in chars):
        return None
    return char


# gitleaks' global allowlist (placeholders such as ${VAR}, sample values) belongs to its
# rules; auditq's own formats are exact enough to need none.
GLOBAL_ALLOW = (_allow({**DATA["allow"], "target": "secret"}),)
TOKEN_RULES: tuple[TokenRule, ...] = (
    *(_rule(entry, ()) for entry in DATA["local_tokens"]),
    *(_rule(entry, GLOBAL_ALLOW) for entry in DATA["tokens"]),
)
_KEYWORD_RULES: dict[str, list[int]] = {}
for _index, _entry in enumerate([*DATA["local_tokens"], *DATA["tokens"]]):
    for _keyword in _entry["keywords"]:
        _KEYWORD_RULES.setdefault(_keyword, []).append(_index)
KEYWORDS: tuple[str, ...] = tuple(sorted(_KEYWORD_RULES))
_RULES_OF_KEYWORD: tuple[tuple[int, ...], ...] = tuple(tuple(_KEYWORD_RULES[k]) for k in KEYWORDS)
# Every keyword that occurs is needed (not only the leftmost): the standard match kind, in
# the automaton's fastest form.
_KEYWORD_AUTOMATON = ahocorasick_rs.AhoCorasick(
    KEYWORDS, implementation=ahocorasick_rs.Implementation.DFA
)


def rules_for(lowered: str) -> tuple[TokenRule, ...]:
    """The token rules one of whose keywords occurs in `lowered` (lowercase text)."""
    found = _KEYWORD_AUTOMATON.find_matches_as_indexes(lowered, overlapping=True)
    if not found:
        return ()
    if len(found) == 1:  # the commonest case: one keyword, its rules
        return _RULES_OF_ONE[found[0][0]]
    return _rules_of(frozenset([keyword for keyword, _, _ in found]))


def _rules_of_keywords(keywords: frozenset[int]) -> tuple[TokenRule, ...]:
    """The token rules of these keywords (by index), in the rule data's order."""
    indexes = {i for keyword in keywords for i in _RULES_OF_KEYWORD[keyword]}
    return tuple(TOKEN_RULES[i] for i in sorted(indexes))


# Remembered: the same few keywords occur again and again.
_rules_of = functools.lru_cache(maxsize=1024)(_rules_of_keywords)
_RULES_OF_ONE = tuple(_rules_of_keywords(frozenset((index,))) for index in range(len(KEYWORDS)))


def token_spans(text: str, lowered: str) -> list[tuple[int, int]]:
    """The merged spans of every credential the token rules find in `text`."""
    spans: list[tuple[int, int]] = []
    for rule in rules_for(lowered):
        if rule.may_match(lowered):
            spans += rule.secrets(text)
    if not spans:
        return spans
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
