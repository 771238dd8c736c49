"""Redact secrets from audit event payloads and free-form strings before they are stored.

Two rules, applied to every string of an event (service/events.py `redact_event`) and to
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

The value rule. Whatever key holds it, a string loses the credentials it carries: the value
of a sensitive `key=value` / `key: value` pair (URL query strings and JSON inside text
included), the password of `scheme://user:password@host`, the credential after `Bearer` /
`Basic`, PEM private-key blocks, JWTs, AWS access key ids (with a secret that follows one),
GitHub, GitLab, Slack, Stripe, Google, npm and OpenAI style tokens, and auditq's own `aq_`
tokens. Each is replaced by "[REDACTED]"; redacting twice changes nothing.

Speed. Before any rule runs, one Aho-Corasick scan (STEMS: a stem of every secret word,
every token prefix, `://`) over the text, or over a whole encoded event
(`may_hold_secret_json`), tells whether any rule could act; most events stop there. Keys
are remembered (an LRU cache), so a key costs a lookup. `python -m bench.redaction`.
"""

import functools
import re

import ahocorasick_rs

REDACTED = "[REDACTED]"
MAX_DEPTH = 200  # levels of nested dicts/lists redacted; anything deeper is replaced whole

# Words (after lowercasing, and each also in the plural) that name a secret wherever they
# stand in a key. Joined forms ("apikey") cover keys whose words are glued together.
SECRET_WORDS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "passcode",
        "secret",
        "token",
        "cookie",
        "credential",
        "creds",
        "authorization",
        "jwt",
        "otp",
        "totp",
        "hotp",
        "apikey",
        "privatekey",
        "accesskey",
        "secretkey",
        "accountkey",
        "authkey",
        "signingkey",
        "encryptionkey",
        "masterkey",
        "sessionkey",
        "sessionid",
        "backupcode",
        "recoverycode",
        "2facode",
        "mfacode",
        "signature",
        "sig",
    }
)
# A single word ending in one of these is a secret word too (dbpassword, githubtoken).
SECRET_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "cookie",
    "credential",
    "authorization",
    "apikey",
    "privatekey",
    "accesskey",
    "backupcode",
    "recoverycode",
)
# A key whose last word is one of these describes a secret rather than holding it.
DESCRIPTORS: frozenset[str] = frozenset(
    {
        "count",
        "hint",
        "length",
        "len",
        "size",
        "limit",
        "type",
        "kind",
        "policy",
        "rule",
        "rules",
        "strength",
        "expiry",
        "expires",
        "expired",
        "expiration",
        "ttl",
        "age",
        "at",
        "required",
        "enabled",
        "disabled",
        "changed",
        "updated",
        "created",
        "rotated",
        "used",
        "status",
        "format",
        "version",
        "algorithm",
        "alg",
        "name",
        "endpoint",
        "consent",
    }
)
QUANTITIES: frozenset[str] = frozenset({"max", "min", "num", "total", "number"})
SENSITIVE_KEYS = SECRET_WORDS  # the former name

_PART_RE = re.compile(r"[A-Za-z]+|[0-9]+")  # between separators; digits stand alone
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # a part cut on case changes
_JOIN_MAX = 3  # adjacent words joined when looking for a secret word


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
    if len(key) > _CACHED_KEY_MAX_CHARS:
        return _is_sensitive_key(key, extra_keys)
    # Keys repeat from event to event: remembered, a key costs a lookup, not a split.
    return _is_sensitive_key_cached(key, extra_keys)


_CACHED_KEY_MAX_CHARS = 64


def _is_sensitive_key(key: str, extra_keys: frozenset[str]) -> bool:
    words = key_words(key)
    if not words:
        return False
    if any(_is_glued_secret(part) for part in _PART_RE.findall(key)):
        return True  # a secret word in any casing (`authORIZatIon`), split or not
    if extra_keys and _names_extra_key(words, _normalize_all(extra_keys)):
        return True
    if words[0] in QUANTITIES and len(words) > 1:
        return False
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


_is_sensitive_key_cached = functools.lru_cache(maxsize=8192)(_is_sensitive_key)


# The pre-check: every rule below needs one of these in the lowercased text (a secret word
# holds one of the stems; a token format starts with its prefix; a URL password "://").
# Text without any (most values) is returned as it is, at once. One Aho-Corasick automaton
# finds any of them in a single pass (a regex alternation would try each at every position).
STEMS: tuple[str, ...] = (
    *("pass", "pwd", "secret", "token", "cookie", "cred", "authoriz", "jwt", "otp", "key"),
    *("session", "backup", "recovery", "2fa", "mfa", "sig", "bearer", "basic", "-----", "://"),
    *("eyj", "akia", "asia", "abia", "acca", "aiza", "npm_", "sk-", "_live_", "_test_"),
    *("whsec_", "aq_", "xox", "xapp-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    *("glpat-", "gldt-", "glrt-", "glptt-", "glsoat-", "glcbt-", "glimt-", "glffct-"),
    "glagent-",
)


class _Precheck:
    """The stems (and the extra keys' words) as automatons for text and for UTF-8 bytes."""

    def __init__(self, extra_keys: frozenset[str]) -> None:
        words = {max(key_words(key) or (_normalize(key),), key=len) for key in extra_keys}
        stems = [*STEMS, *sorted(word for word in words if word)]
        # Only whether a stem occurs counts, and every match kind finds one when any does;
        # leftmost-first lets the automaton skip ahead with its prefilter (3 times faster on
        # an event than the standard kind, which must follow every state).
        kind = ahocorasick_rs.MatchKind.LeftmostFirst
        self.text = ahocorasick_rs.AhoCorasick(stems, matchkind=kind)
        self.data = ahocorasick_rs.BytesAhoCorasick([s.encode() for s in stems], matchkind=kind)


_PRECHECK = _Precheck(frozenset())


@functools.lru_cache(maxsize=64)
def _precheck_for(extra_keys: frozenset[str]) -> _Precheck:
    return _Precheck(extra_keys) if extra_keys else _PRECHECK


def may_hold_secret(text: str, extra_keys: frozenset[str] = frozenset()) -> bool:
    """The cheap pre-check: False means no rule can change `text`."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    return bool(precheck.text.find_matches_as_indexes(text.lower()))


def may_hold_secret_json(data: bytes, extra_keys: frozenset[str] = frozenset()) -> bool:
    """The pre-check over a whole encoded event: False means no string of it needs redaction
    (its keys and strings are all in the JSON, and no stem holds a character JSON escapes)."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    return bool(precheck.data.find_matches_as_indexes(data.lower()))


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
    Stems found only inside string values that are UUIDs (ids) do not count."""
    precheck = _precheck_for(extra_keys) if extra_keys else _PRECHECK
    for _, start, end in precheck.data.find_matches_as_indexes(data.lower()):
        around = max(0, start - _UUID_VALUE_CHARS)
        inside = any(
            m.start() < start and end < m.end()
            for m in _UUID_VALUE.finditer(data, around, end + _UUID_VALUE_CHARS)
        )
        if not inside:
            return True
    return False


def redact_sensitive(value: object, extra_keys: frozenset[str] = frozenset()) -> object:
    """Return JSON-like data with secrets redacted (the value itself when it has none)."""
    return _redact(value, extra_keys, 0)


def _redact(value: object, extra_keys: frozenset[str], depth: int) -> object:
    if isinstance(value, str):
        return redact_sensitive_in_string(value, extra_keys)
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        # Deeper than any real event nests: replaced whole, so hostile nesting can neither
        # exhaust the stack nor carry a secret past the redaction.
        return REDACTED
    if isinstance(value, dict):
        return _redact_mapping(value, extra_keys, depth)
    if isinstance(value, list | tuple):
        items = [_redact(item, extra_keys, depth + 1) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    return value


_DIFF_FIELD_KEY = "field"
_DIFF_VALUE_KEYS = ("old", "new")


def _redact_mapping(
    mapping: dict[object, object], extra_keys: frozenset[str], depth: int
) -> dict[object, object]:
    """Redact values under sensitive keys and recurse into the rest."""
    field = mapping.get(_DIFF_FIELD_KEY)
    # A change diff names the secret in "field" and carries it under "old"/"new".
    secret_diff = isinstance(field, str) and is_sensitive_key(field, extra_keys)
    out: dict[object, object] = {}
    changed = False
    for key, item in mapping.items():
        new_key = key
        if (isinstance(key, str) and is_sensitive_key(key, extra_keys)) or (
            secret_diff and key in _DIFF_VALUE_KEYS
        ):
            new: object = item if item == REDACTED else REDACTED  # redacted already: kept
        else:
            new = _redact(item, extra_keys, depth + 1)
            if isinstance(key, str):
                # A key can be a credential itself ({"ghp_…": true}).
                new_key = redact_sensitive_in_string(key, extra_keys)
        changed = changed or new is not item or new_key is not key
        out[new_key] = new
    return out if changed else mapping


def redact_sensitive_in_string(text: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """Return text with every credential the value rule knows redacted (see the module doc)."""
    if not may_hold_secret(text, extra_keys):
        return text
    original = text
    if _names_secret_field(text, extra_keys):
        # A change diff as text (a payload that is not JSON): {"field": "password", "old": …}.
        # Which "old"/"new" belong to it is unknowable in broken JSON, so every one goes.
        extra_keys = extra_keys | _DIFF_VALUE_KEY_SET
    text = _PEM_RE.sub(REDACTED, text)
    text = _TOKEN_RE.sub(REDACTED, text)
    text = _redact_url_passwords(text)
    # Redacting a pair value can splice a URL password onto its "@", so look for URLs again.
    text = _redact_url_passwords(_redact_pairs(text, extra_keys))
    text = _ENCODED_PAIR_RE.sub(lambda m: _redact_encoded_pair(m, extra_keys), text)
    text = _BARE_AUTH_RE.sub(_redact_bare_auth, text)
    return original if text == original else text


# Well-known credential formats.
_PEM_RE = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----.*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",  # to the end when it has no END line
    re.DOTALL,
)
_TOKEN_RE = re.compile(
    r"(?<![\w-])(?:"
    r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"  # JWT: header.payload.signature (maybe empty: alg none)
    r"|(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"  # an AWS key id, and its secret:
    r"(?:(?:[ \t]*[:;,|/=][ \t]*|[ \t]+)[A-Za-z0-9/+]{40,}(?![\w=]))?"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub
    r"|github_pat_\w{20,}"
    r"|gl(?:pat|dt|rt|ptt|soat|cbt|imt|ffct|agent)-[\w-]{20,}"  # GitLab
    r"|xox[abprse]-[\w-]{10,}|xapp-[\w-]{10,}"  # Slack
    r"|(?:sk|rk)_(?:live|test)_\w{10,}|whsec_\w{16,}"  # Stripe
    r"|aq_[\w-]{20,}"  # auditq's own API tokens (service/store/tokens.py TOKEN_PREFIX)
    r"|AIza[\w-]{35}"  # Google API keys
    r"|npm_\w{30,}"
    r"|sk-(?:proj-|ant-)?[\w-]{20,}"  # OpenAI / Anthropic style
    r"|https://hooks\.slack\.com/services/[\w/]+"
    r")"
)


# Scanning patterns open with a lookbehind so a long run of word characters is tried once,
# not once per start position; no quantifier is nested inside another.
_URL_USERINFO_RE = re.compile(
    r"(?<![\w+.-])(?P<head>[a-z][a-z0-9+.-]*://[^\s:@/?#\[\]\"'<>]*:)(?P<pw>[^\s/?#\"'<>]+)@",
    re.IGNORECASE,
)
# Only the key and separator are consumed, so a non-sensitive value stays searchable
# (e.g. redirect=https://x/cb?access_token=...).
_KEY_RE = re.compile(r"(?<![\w.-])(?P<key>[\w.-]+)(?P<kq>\\?[\"'])?[ \t]*(?P<sep>[:=])[ \t]*")
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
            r"\[[^\[\]]*\]",  # the whole array, so no recovery code leaks
            r"\{[^{}]*\}",  # nested objects fall back to their own keys
            rf"[^{_STOP}\[{{][^{_STOP}]*",
        )
    )
)
# A Cookie header holds many name=value pairs separated by "; ", so take the rest of the line.
_COOKIE_VALUE_RE = re.compile(_QUOTED + r"|[^\r\n\"'\\]*[^\s\"'\\]")
# A pair inside a URL-encoded URL (redirect=https%3A%2F%2Fx%2F%3Ftoken%3Dabc%26n%3D1).
_ENCODED_PAIR_RE = re.compile(r"(?<![\w.-])(?P<key>[\w.-]+)%3[dD](?P<value>(?:(?!%26)[^\s&\"'])+)")
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
    return _URL_USERINFO_RE.sub(lambda m: m["head"] + REDACTED + "@", text)


def _redact_pairs(text: str, extra_keys: frozenset[str]) -> str:
    """Replace the value of every key=value / key: value pair whose key is sensitive."""
    out: list[str] = []
    pos = 0
    for match in _KEY_RE.finditer(text):
        # A match inside a value that was already redacted must not be spliced again.
        if match.start() < pos or not is_sensitive_key(match["key"], extra_keys):
            continue
        start = match.end()
        words = key_words(match["key"])
        if words and words[-1] == "authorization":
            scheme = _AUTH_SCHEME_RE.match(text, start)
            start = scheme.end() if scheme else start
        cookie_header = bool(words) and words[-1] == "cookie" and match["sep"] == ":"
        value = (_COOKIE_VALUE_RE if cookie_header else _VALUE_RE).match(text, start)
        if value is None:
            continue
        # Reuse the value's quoting, else the key's, so JSON and repr output stay well-formed.
        quote = value["q"] or value["eq"] or match["kq"] or ""
        out += (text[pos:start], quote, REDACTED, quote)
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


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
