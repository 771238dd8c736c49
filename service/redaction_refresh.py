"""Rebuild the token formats of service/redaction_rules.json from gitleaks' rule set.

    python -m service.redaction_refresh PATH/TO/gitleaks/config/gitleaks.toml \
        --commit <the gitleaks commit it came from>

gitleaks (MIT) keeps its rules as generated data, `config/gitleaks.toml`: per rule a Go
(RE2) regular expression, the keywords that must occur for it to apply, an entropy floor
and allowlists. This script translates each expression into the dialect that both Python's
`re` (with re.ASCII) and JavaScript's `RegExp` (no flags) read the same way, so the auditq
server and the Node client load one file; it keeps every other part of the JSON (the key
rules, `local_tokens`, `notes`) as it is. Translation (hand-written because no library
converts RE2 to a portable dialect): inline flags are spelled out (`(?i)` scopes become
`[aA]` classes, `(?s:.)` becomes `[\\s\\S]`), named groups become plain groups (numbering
kept), `\\z` becomes `(?![\\s\\S])`, a `[` inside a class is escaped and POSIX classes are
expanded; a leading lazy `[\\w.-]{0,50}?` is dropped (_without_left_context) and the gap
after a leading keyword does not cross that keyword (_one_scan_per_keyword). A rule that
cannot be translated, or that `EXCLUDED` names, is left out and listed in `source.excluded`
with the reason.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

RULES_PATH = Path(__file__).with_name("redaction_rules.json")
REPOSITORY = "https://github.com/gitleaks/gitleaks"

# Rules left out on purpose, with the reason (kept in the data file).
EXCLUDED = {
    "generic-api-key": (
        "a key named access/auth/api/key/credential/password/secret/token followed by a "
        "value: the key rule (keys.secret_words) covers these names, at every depth and in "
        "text, and this expression would scan every position of every such event"
    ),
}

_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "digit": "0-9",
    "lower": "a-z",
    "upper": "A-Z",
    "space": "\\t\\n\\v\\f\\r ",
    "xdigit": "0-9A-Fa-f",
    "word": "0-9A-Za-z_",
    "punct": "!-/:-@\\[-`{-~",
}


class Untranslatable(ValueError):
    """An expression uses RE2 syntax this translator does not carry over."""


def translate(pattern: str) -> str:
    """Return `pattern` (RE2 syntax) in the dialect Python `re` and JavaScript share."""
    out, pos = _sequence(pattern, 0, {"i": False, "s": False})
    if pos != len(pattern):
        raise Untranslatable(f"unbalanced ')' at {pos}")
    return out


def _sequence(p: str, pos: int, flags: dict[str, bool]) -> tuple[str, int]:
    """Translate up to the ')' closing the current group (not consumed)."""
    flags = dict(flags)
    out: list[str] = []
    while pos < len(p):
        ch = p[pos]
        if ch == ")":
            break
        if ch == "\\":
            piece, pos = _escape(p, pos)
        elif ch == "[":
            piece, pos = _class(p, pos, flags["i"])
        elif ch == "(":
            setting = _FLAGS_RE.match(p, pos)
            if setting is not None and setting[3] == ")":
                flags = _flags(setting, flags)  # for the rest of this group
                pos = setting.end()
                continue
            piece, pos = _group(p, pos, flags)
        elif ch == "." and flags["s"]:
            piece, pos = "[\\s\\S]", pos + 1
        elif ch.isascii() and ch.isalpha() and flags["i"]:
            piece, pos = f"[{ch.lower()}{ch.upper()}]", pos + 1
        elif ch == "{" and not _REPEAT_RE.match(p, pos):
            piece, pos = "\\{", pos + 1  # a literal brace, escaped for both dialects
        else:
            piece, pos = ch, pos + 1
        out.append(piece)
    return "".join(out), pos


_FLAGS_RE = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")
_REPEAT_RE = re.compile(r"\{\d+(?:,\d*)?\}")


def _flags(setting: re.Match[str], flags: dict[str, bool]) -> dict[str, bool]:
    new = dict(flags)
    for f in setting[1]:
        new[_flag(f)] = True
    for f in setting[2] or "":
        new[_flag(f)] = False
    return new


def _group(p: str, pos: int, flags: dict[str, bool]) -> tuple[str, int]:
    """Translate a group starting at `p[pos] == '('`, its ')' included."""
    setting = _FLAGS_RE.match(p, pos)
    if p.startswith("(?:", pos):
        head, pos = "(?:", pos + 3
    elif p.startswith("(?P<", pos):
        head, pos = "(", p.index(">", pos) + 1  # a plain group: the same number
    elif setting is not None:
        head, pos, flags = "(?:", setting.end(), _flags(setting, flags)
    elif p.startswith("(?", pos):
        raise Untranslatable(f"group syntax at {pos}")
    else:
        head, pos = "(", pos + 1
    inner, pos = _sequence(p, pos, flags)
    if p[pos : pos + 1] != ")":
        raise Untranslatable("unclosed group")
    return f"{head}{inner})", pos + 1


def _flag(f: str) -> str:
    if f not in "is":
        raise Untranslatable(f"flag {f!r}")
    return f


def _escape(p: str, pos: int) -> tuple[str, int]:
    nxt = p[pos + 1 : pos + 2]
    if nxt == "z":
        return "(?![\\s\\S])", pos + 2
    if nxt == "A":
        return "^", pos + 2
    if nxt == "x":
        m = re.compile(r"\\x(?:[0-9a-fA-F]{2}|\{([0-9a-fA-F]+)\})").match(p, pos)
        if m is None:
            raise Untranslatable(f"escape at {pos}")
        if m[1] is not None:
            code = int(m[1], 16)
            if code > 0xFF:
                raise Untranslatable("\\x{…} beyond one byte")
            return f"\\x{code:02x}", m.end()
        return m[0], m.end()
    if nxt in ("p", "P", "Q", "C", "E"):
        raise Untranslatable(f"escape \\{nxt}")
    if nxt.isalnum() and nxt not in "dDsSwWbBtnrfv":
        raise Untranslatable(f"escape \\{nxt}")
    return p[pos : pos + 2], pos + 2


def _class(p: str, pos: int, fold: bool) -> tuple[str, int]:
    """Translate a character class starting at `p[pos] == '['`, its ']' included."""
    pos += 1
    head = "["
    if p[pos : pos + 1] == "^":
        head, pos = "[^", pos + 1
    items: list[str] = []
    folded: list[str] = []
    while pos < len(p) and (p[pos] != "]" or not items):
        if p.startswith("[:", pos):
            end = p.index(":]", pos)
            if p[pos + 2 : end] not in _POSIX:
                raise Untranslatable(f"POSIX class {p[pos + 2 : end]}")
            items.append(_POSIX[p[pos + 2 : end]])
            pos = end + 2
            continue
        lo, pos = _class_atom(p, pos)
        if p[pos : pos + 1] == "-" and p[pos + 1 : pos + 2] not in ("]", ""):
            hi, pos = _class_atom(p, pos + 1)
            items.append(f"{lo}-{hi}")
            if fold and lo.isalpha() and hi.isalpha():
                if lo.islower() != hi.islower():
                    raise Untranslatable("a range across cases")
                folded.append(f"{_swap(lo)}-{_swap(hi)}")
            continue
        items.append(lo)
        if fold and lo.isascii() and lo.isalpha():
            folded.append(_swap(lo))
    if pos >= len(p):
        raise Untranslatable("unclosed class")
    return "".join([head, *items, *folded, "]"]), pos + 1


def _class_atom(p: str, pos: int) -> tuple[str, int]:
    if p[pos] == "\\":
        atom, pos = _escape(p, pos)
        if atom.startswith("(?") or atom == "^":
            raise Untranslatable("an anchor in a class")
        return atom, pos
    if p[pos] in "[-":  # escaped: the class can grow (case folding) behind it
        return "\\" + p[pos], pos + 1
    return p[pos], pos + 1


def _swap(ch: str) -> str:
    return ch.lower() if ch.isupper() else ch.upper()


# gitleaks' "<name> … = <secret>" rules open with `[\w.-]{0,50}?` (some twice, nested): it
# only widens a match to the left of the name, the secret's group is the same without it, and
# Python's backtracking engine tries it at every position (quadratic where RE2 is linear).
_LEFT_CONTEXT_RE = re.compile(r"^((?:\(\?i\))?(?:\(\?i:)?)\[\\w\.-\]\{0,50\}\?")


def _without_left_context(pattern: str) -> str:
    r"""`pattern` without its leading lazy `[\w.-]{0,50}?` (any number of them)."""
    while (shorter := _LEFT_CONTEXT_RE.sub(r"\1", pattern, count=1)) != pattern:
        pattern = shorter
    return pattern


# gitleaks' curl rules open with `\bcurl\b` and a gap of up to six lines,
# `(?:.*?|.*?(?:[\r\n]{1,2}.*?){1,5})`, before the flag that holds the secret. RE2 runs that
# in linear time; a backtracking engine (Python's `re`, Node's RegExp) retries from every
# `curl` and scans the rest of the line(s) each time: quadratic, a minute of CPU for 64 KiB
# of "curl curl …". So every `.` of the gap becomes `(?:(?!\bcurl\b).)`: a scan ends at the
# next occurrence of the keyword, the scans from successive occurrences cover disjoint text
# (linear). No match is lost: a match whose gap held a later `curl` is also a match from the
# last such `curl` (its gap is a suffix of the first one's). Hand-written, as the translation
# is: no library bounds a backtracking expression this way.
_KEYWORD_GAP_RE = re.compile(r"^\\b(\w+)\\b(\(\?:(?:[.*?|)]|\(\?:|\[\\r\\n\]|\{\d,\d\})+)")


def _one_scan_per_keyword(pattern: str) -> str:
    """`pattern` with the `.` of a gap after its leading `\bkeyword\b` not crossing the keyword."""
    found = _KEYWORD_GAP_RE.match(pattern)
    if found is None:
        return pattern
    dot = f"(?:(?!\\b{found[1]}\\b).)"
    return pattern[: found.start(2)] + found[2].replace(".", dot) + pattern[found.end(2) :]


def _allow(allowlists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The allowlists that apply to text (gitleaks' path allowlists do not)."""
    kept = []
    for allow in allowlists:
        entry: dict[str, Any] = {}
        if allow.get("regexes"):
            entry["regexes"] = [translate(r) for r in allow["regexes"]]
            entry["target"] = allow.get("regexTarget", "secret")
        if allow.get("stopwords"):
            entry["stopwords"] = sorted({w.lower() for w in allow["stopwords"]})
        if entry:
            entry["condition"] = allow.get("condition", "OR").upper()
            if entry["condition"] == "AND" and allow.get("paths"):
                continue  # holds only together with a path: never for an event
            kept.append(entry)
    return kept


def build_tokens(config: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The portable token rules of a gitleaks config, and the rules left out with why."""
    tokens: list[dict[str, Any]] = []
    excluded: dict[str, str] = {}
    for rule in config["rules"]:
        rid = rule["id"]
        if rid in EXCLUDED:
            excluded[rid] = EXCLUDED[rid]
            continue
        if not rule.get("regex"):
            excluded[rid] = "matches file paths only"
            continue
        if not rule.get("keywords"):
            excluded[rid] = "no keyword for the pre-check"
            continue
        try:
            regex = _one_scan_per_keyword(translate(_without_left_context(rule["regex"])))
            allow = _allow(rule.get("allowlists", []))
            compiled = re.compile(regex, re.ASCII)
        except (Untranslatable, re.error) as exc:
            excluded[rid] = f"not translated: {exc}"
            continue
        token: dict[str, Any] = {
            "id": rid,
            "description": rule.get("description", ""),
            "regex": regex,
            "keywords": sorted({k.lower() for k in rule["keywords"]}),
            "group": int(rule.get("secretGroup", 0)),
            "groups": compiled.groups,
        }
        if rule.get("entropy"):
            token["entropy"] = float(rule["entropy"])
        if allow:
            token["allow"] = allow
        tokens.append(token)
    return sorted(tokens, key=lambda t: t["id"]), dict(sorted(excluded.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="gitleaks' config/gitleaks.toml")
    parser.add_argument("--commit", required=True, help="the gitleaks commit it comes from")
    parser.add_argument("--license", type=Path, help="gitleaks' LICENSE (default: beside it)")
    parser.add_argument("--out", type=Path, default=RULES_PATH)
    args = parser.parse_args(argv)
    config = tomllib.loads(args.config.read_text())
    license_path = args.license or args.config.parent.parent / "LICENSE"
    data = json.loads(args.out.read_text())
    tokens, excluded = build_tokens(config)
    glob = config.get("allowlist", {})
    data["tokens"] = tokens
    data["allow"] = {
        "regexes": [translate(r) for r in glob.get("regexes", [])],
        "stopwords": sorted({w.lower() for w in glob.get("stopwords", [])}),
    }
    data["source"] = {
        "name": "gitleaks",
        "repository": REPOSITORY,
        "path": "config/gitleaks.toml",
        "commit": args.commit,
        "min_version": config.get("minVersion", ""),
        "license": "MIT",
        "license_text": license_path.read_text() if license_path.exists() else "",
        "excluded": excluded,
        "refresh": "python -m service.redaction_refresh <gitleaks.toml> --commit <sha>",
    }
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(tokens)} token rules written to {args.out}; {len(excluded)} left out")
    for rid, why in excluded.items():
        print(f"  left out {rid}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
