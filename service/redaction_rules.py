"""The redaction rule data (service/redaction_rules.json) and its credential-format rules.

The JSON file is the one source of the rules for every producer (this package, the Node
client): the words that make a key sensitive, the names of the fields that make a mapping a
name/value pair, and the credential formats as regular expressions (gitleaks' maintained
rule set plus auditq's own; `python -m service.redaction_refresh` rebuilds the first part).
Here the formats are compiled once and applied keyword-first: one Aho-Corasick automaton
over every rule's keywords tells which few rules can match a text at all (gitleaks' own
design); only those run. docs/redaction.md describes what is caught and what it costs.
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
    )


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
# Every keyword that occurs is needed (not only the leftmost): the standard match kind.
_KEYWORD_AUTOMATON = ahocorasick_rs.AhoCorasick(KEYWORDS)


def rules_for(lowered: str) -> tuple[TokenRule, ...]:
    """The token rules one of whose keywords occurs in `lowered` (lowercase text)."""
    found = _KEYWORD_AUTOMATON.find_matches_as_indexes(lowered, overlapping=True)
    if not found:
        return ()
    return _rules_of(frozenset(keyword for keyword, _, _ in found))


@functools.lru_cache(maxsize=1024)
def _rules_of(keywords: frozenset[int]) -> tuple[TokenRule, ...]:
    """The token rules of these keywords (by index), in the rule data's order; remembered:
    the same few keywords occur again and again."""
    indexes = {i for keyword in keywords for i in _RULES_OF_KEYWORD[keyword]}
    return tuple(TOKEN_RULES[i] for i in sorted(indexes))


def token_spans(text: str, lowered: str) -> list[tuple[int, int]]:
    """The merged spans of every credential the token rules find in `text`."""
    spans: list[tuple[int, int]] = []
    for rule in rules_for(lowered):
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
