"""Redact secrets from audit event payloads and free-form strings before they are stored."""

import functools
import re

REDACTED = "[REDACTED]"
MAX_DEPTH = 200  # levels of nested dicts/lists redacted; anything deeper is replaced whole

SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "accesstoken",
        "refreshtoken",
        "apikey",
        "authorization",
        "cookie",
        "privatekey",
        "clientsecret",
        "credentials",
        "twofactorsecret",
        "twofactorbackupcodes",
        "2fasecret",
        "2fabackupcodes",
        "backupcodes",
        "recoverycodes",
        "totpsecret",
        "otpsecret",
        "mfasecret",
    }
)

# Any key ending in one of these is sensitive whatever its prefix (db_password, x-api-key).
_STRONG_SUFFIXES = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "credentials",
    "authorization",
    "cookie",
)

_DIFF_FIELD_KEY = "field"
_DIFF_VALUE_KEYS = ("old", "new")

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
_BARE_AUTH_RE = re.compile(
    r"(?<![\w-])(?P<scheme>bearer|basic)(?P<gap>[ \t]+)(?P<cred>[\w.~+/-]+=*)", re.IGNORECASE
)
_CREDENTIAL_MARKS = frozenset("0123456789._~+/=")
_CREDENTIAL_MIN_PLAIN_LEN = 20


def _normalize(key: str) -> str:
    """Lowercase a key and drop every non-alphanumeric character."""
    return "".join(ch for ch in key.lower() if ch.isalnum())


@functools.lru_cache(maxsize=64)
def _normalize_all(keys: frozenset[str]) -> frozenset[str]:
    """Normalize a set of extra keys once per distinct set."""
    return frozenset(_normalize(key) for key in keys)


def is_sensitive_key(key: str, extra_keys: frozenset[str] = frozenset()) -> bool:
    """Tell whether a mapping key or header name names a secret."""
    if len(key) > _CACHED_KEY_MAX_CHARS:
        return _is_sensitive_key(key, extra_keys)
    # Keys repeat from event to event: remembered, a key costs a lookup, not a normalisation.
    return _is_sensitive_key_cached(key, extra_keys)


_CACHED_KEY_MAX_CHARS = 64


def _is_sensitive_key(key: str, extra_keys: frozenset[str]) -> bool:
    norm = _normalize(key)
    if not norm:
        return False
    return (
        norm in SENSITIVE_KEYS
        or norm.endswith(_STRONG_SUFFIXES)
        or (bool(extra_keys) and norm in _normalize_all(extra_keys))
    )


_is_sensitive_key_cached = functools.lru_cache(maxsize=8192)(_is_sensitive_key)


def redact_sensitive(value: object, extra_keys: frozenset[str] = frozenset()) -> object:
    """Return a redacted deep copy of JSON-like data."""
    return _redact(value, extra_keys, 0)


def _redact(value: object, extra_keys: frozenset[str], depth: int) -> object:
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        # Deeper than any real event nests: replaced whole, so hostile nesting can neither
        # exhaust the stack nor carry a secret past the redaction.
        return REDACTED
    if isinstance(value, dict):
        return _redact_mapping(value, extra_keys, depth)
    if isinstance(value, list | tuple):
        items = [_redact(item, extra_keys, depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, str):
        return redact_sensitive_in_string(value, extra_keys)
    return value


def _redact_mapping(
    mapping: dict[object, object], extra_keys: frozenset[str], depth: int
) -> dict[object, object]:
    """Redact values under sensitive keys and recurse into the rest."""
    field = mapping.get(_DIFF_FIELD_KEY)
    # A change diff names the secret in "field" and carries it under "old"/"new".
    secret_diff = isinstance(field, str) and is_sensitive_key(field, extra_keys)
    out: dict[object, object] = {}
    for key, item in mapping.items():
        if (isinstance(key, str) and is_sensitive_key(key, extra_keys)) or (
            secret_diff and key in _DIFF_VALUE_KEYS
        ):
            out[key] = REDACTED
        else:
            out[key] = _redact(item, extra_keys, depth + 1)
    return out


# Every pattern below needs one of these: a URL password and a key/value pair a ":" or "=",
# a bare credential its scheme. Text without any (most values) is returned as it is, at once.
_MAY_HOLD_SECRET_RE = re.compile(r"[:=]|bearer|basic", re.IGNORECASE)


def redact_sensitive_in_string(text: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """Return text with credentials in URLs, key/value pairs and auth headers redacted."""
    if _MAY_HOLD_SECRET_RE.search(text) is None:
        return text
    if _names_secret_field(text, extra_keys):
        # A change diff as text (a payload that is not JSON): {"field": "password", "old": …}.
        # Which "old"/"new" belong to it is unknowable in broken JSON, so every one goes.
        extra_keys = extra_keys | _DIFF_VALUE_KEY_SET
    text = _redact_url_passwords(text)
    # Redacting a pair value can splice a URL password onto its "@", so look for URLs again.
    text = _redact_url_passwords(_redact_pairs(text, extra_keys))
    return _BARE_AUTH_RE.sub(_redact_bare_auth, text)


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
        norm = _normalize(match["key"])
        if norm.endswith("authorization"):
            scheme = _AUTH_SCHEME_RE.match(text, start)
            start = scheme.end() if scheme else start
        cookie_header = norm.endswith("cookie") and match["sep"] == ":"
        value = (_COOKIE_VALUE_RE if cookie_header else _VALUE_RE).match(text, start)
        if value is None:
            continue
        # Reuse the value's quoting, else the key's, so JSON and repr output stay well-formed.
        quote = value["q"] or value["eq"] or match["kq"] or ""
        out += (text[pos:start], quote, REDACTED, quote)
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _redact_bare_auth(match: re.Match[str]) -> str:
    """Redact the credential after a bare Bearer/Basic scheme when it looks like one."""
    cred = match["cred"]
    # Prose like "basic authentication" must survive; real tokens carry digits, symbols,
    # inner capitals or are too long to be a word.
    plain = _CREDENTIAL_MARKS.isdisjoint(cred) and not any(ch.isupper() for ch in cred[1:])
    if plain and len(cred) < _CREDENTIAL_MIN_PLAIN_LEN:
        return match[0]
    return match["scheme"] + match["gap"] + REDACTED
