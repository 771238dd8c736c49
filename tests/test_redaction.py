"""Tests for secret redaction in audit payloads and strings."""

import copy
import random
import time

import pytest

from service.redaction import (
    REDACTED,
    SENSITIVE_KEYS,
    is_sensitive_key,
    redact_sensitive,
    redact_sensitive_in_string,
)

# (input, expected output, planted secret that must not survive)
STRING_CASES = [
    ('{"password": "hunter2"}', '{"password": "[REDACTED]"}', "hunter2"),
    ('{"token":123,"n":1}', '{"token":"[REDACTED]","n":1}', "123"),
    ('{"secret": true}', '{"secret": "[REDACTED]"}', "true"),
    ('{"api_key": null}', '{"api_key": "[REDACTED]"}', "null"),
    ('{"client_secret": -4.5e3}', '{"client_secret": "[REDACTED]"}', "4.5e3"),
    (r'{"password": "a\"q1\"b", "n": 1}', '{"password": "[REDACTED]", "n": 1}', "q1"),
    (
        "{'password': 'pyr3pr', 'user': 'bob'}",
        "{'password': '[REDACTED]', 'user': 'bob'}",
        "pyr3pr",
    ),
    (r"{\"password\": \"dbl3nc\"}", r"{\"password\": \"[REDACTED]\"}", "dbl3nc"),
    ('{"recovery_codes": ["r1c", "r2c"]}', '{"recovery_codes": "[REDACTED]"}', "r1c"),
    ("password=hunter2 user=bob", "password=[REDACTED] user=bob", "hunter2"),
    ("PASSWORD=Hunter3", "PASSWORD=[REDACTED]", "Hunter3"),
    ("Password: hunter4\nnext", "Password: [REDACTED]\nnext", "hunter4"),
    ("token: abc123", "token: [REDACTED]", "abc123"),
    ('password="two words"', 'password="[REDACTED]"', "two words"),
    ("db_password=pg5;x=1", "db_password=[REDACTED];x=1", "pg5"),
    ("cfg(github_token=ght6)", "cfg(github_token=[REDACTED])", "ght6"),
    ("--client-secret=cs7 --v", "--client-secret=[REDACTED] --v", "cs7"),
    (
        "https://x/cb?code=1&access_token=at8&state=2",
        "https://x/cb?code=1&access_token=[REDACTED]&state=2",
        "at8",
    ),
    (
        "next=https://x/cb?refresh_token=rt9",
        "next=https://x/cb?refresh_token=[REDACTED]",
        "rt9",
    ),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer [REDACTED]", "abc.def.ghi"),
    ("authorization=Basic dXNlcjpwYXNz u=1", "authorization=Basic [REDACTED] u=1", "dXNlcjpwYXNz"),
    ("curl -H 'bearer eyJhbGci.eyJzdWIi.sig'", "curl -H 'bearer [REDACTED]'", "eyJhbGci"),
    ("sent BASIC YWxpY2U6cHc= ok", "sent BASIC [REDACTED] ok", "YWxpY2U6cHc="),
    ("X-Api-Key: xk10", "X-Api-Key: [REDACTED]", "xk10"),
    ("Cookie: sid=ck11; theme=dark\r\nHost: h", "Cookie: [REDACTED]\r\nHost: h", "ck11"),
    ('"set-cookie: sid=ck12; Path=/"', '"set-cookie: [REDACTED]"', "ck12"),
    ("redis://:s3cret@host:6379/0", "redis://:[REDACTED]@host:6379/0", "s3cret"),
    ("redis://user:s3cret@host", "redis://user:[REDACTED]@host", "s3cret"),
    ("rediss://default:tl5pw@cache:6380", "rediss://default:[REDACTED]@cache:6380", "tl5pw"),
    (
        "postgresql://audit:p%40ss@db:5432/audit",
        "postgresql://audit:[REDACTED]@db:5432/audit",
        "p%40ss",
    ),
    (
        "redis+unix://:sockpw@/run/redis.sock?db=0",
        "redis+unix://:[REDACTED]@/run/redis.sock?db=0",
        "sockpw",
    ),
    ("dsn=mysql://u:p@w0rd@db/x", "dsn=mysql://u:[REDACTED]@db/x", "w0rd"),
    ("redis://token:tk13@host", "redis://token:[REDACTED]@host", "tk13"),
]

UNCHANGED = [
    "",
    "tokenizer=bpe",
    "author: bob",
    '{"passing": true, "token_count": 12}',
    "password_hint=pet name",
    "redis://host:6379/0",
    "redis://[::1]:6379",
    "use basic authentication",
    "a bearer token is required",
    "at 12:30:00 user=bob state=ok",
    "password=",
    "Authorization: Bearer ",
    "héllo wörld ✓",
]


@pytest.mark.parametrize(("text", "expected", "secret"), STRING_CASES)
def test_redacts_secret_in_string(text: str, expected: str, secret: str) -> None:
    out = redact_sensitive_in_string(text)
    assert out == expected
    assert secret not in out


@pytest.mark.parametrize("text", UNCHANGED)
def test_leaves_non_sensitive_text_unchanged(text: str) -> None:
    assert redact_sensitive_in_string(text) == text


@pytest.mark.parametrize("text", [case[0] for case in STRING_CASES] + UNCHANGED)
def test_string_redaction_is_idempotent(text: str) -> None:
    once = redact_sensitive_in_string(text)
    assert redact_sensitive_in_string(once) == once


def test_string_redaction_honours_extra_keys() -> None:
    extra = frozenset({"Employee-No"})
    assert redact_sensitive_in_string("employee_no=s1 x=1", extra) == "employee_no=[REDACTED] x=1"
    assert redact_sensitive_in_string("employeeNo: s1", extra) == "employeeNo: [REDACTED]"
    assert redact_sensitive_in_string("employee_no=s1 x=1") == "employee_no=s1 x=1"


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "password=" * 20_000,
        '"password": "' + "\\" * 50_000,
        "x://u:" + "@" * 50_000,
        "token=[" * 20_000,
        "Bearer " * 20_000,
        "a." * 50_000 + "=",
        "redis://" * 20_000,
    ],
)
def test_pathological_input_stays_fast(text: str) -> None:
    started = time.perf_counter()
    once = redact_sensitive_in_string(text)
    assert redact_sensitive_in_string(once) == once
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("password", True),
        ("Api-Key", True),
        ("api_key", True),
        ("APIKEY", True),
        ("apiKey", True),
        ("db_password", True),
        ("github_token", True),
        ("x-api-key", True),
        ("set-cookie", True),
        ("client_secret", True),
        ("2FA_Backup_Codes", True),
        ("recovery-codes", True),
        ("Proxy-Authorization", True),
        ("tokenizer", False),
        ("author", False),
        ("passing", False),
        ("password_hint", False),
        ("", False),
        ("--", False),
    ],
)
def test_is_sensitive_key(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def test_sensitive_keys_are_normalized() -> None:
    assert all(key.isalnum() and key == key.lower() for key in SENSITIVE_KEYS)


def test_is_sensitive_key_extra_keys_are_normalized() -> None:
    assert is_sensitive_key("ssn", frozenset({"S.S.N"}))
    assert not is_sensitive_key("ssn")


DEEP_IN = {
    "a": {
        "b": [
            {
                "c": {
                    "Password": "p1",
                    "API-KEY": 5,
                    "d": [{"e": {"clientSecret": {"nested": "p2"}, "ok": "fine"}}],
                }
            }
        ]
    }
}
DEEP_OUT = {
    "a": {
        "b": [
            {
                "c": {
                    "Password": REDACTED,
                    "API-KEY": REDACTED,
                    "d": [{"e": {"clientSecret": REDACTED, "ok": "fine"}}],
                }
            }
        ]
    }
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DEEP_IN, DEEP_OUT),
        (
            {"PASSWORD": "x", "pass_word": "x", "Access-Token": "x", "two_factor_secret": "x"},
            {
                "PASSWORD": REDACTED,
                "pass_word": REDACTED,
                "Access-Token": REDACTED,
                "two_factor_secret": REDACTED,
            },
        ),
        (
            {"token": 123, "secret": None, "apikey": True, "cookie": 1.5},
            {"token": REDACTED, "secret": REDACTED, "apikey": REDACTED, "cookie": REDACTED},
        ),
        (
            {"backupCodes": ["a", "b"], "credentials": {"user": "u"}},
            {"backupCodes": REDACTED, "credentials": REDACTED},
        ),
        (
            {"changes": [{"field": "password", "old": "a", "new": "b"}]},
            {"changes": [{"field": "password", "old": REDACTED, "new": REDACTED}]},
        ),
        (
            {"field": "user.api_key", "old": None, "new": "k"},
            {"field": "user.api_key", "old": REDACTED, "new": REDACTED},
        ),
        (
            {"field": "email", "old": "a@x.io", "new": "b@x.io"},
            {"field": "email", "old": "a@x.io", "new": "b@x.io"},
        ),
        (
            {"meta": {"dsn": "postgresql://u:pw@h/db", "note": "token=abc1"}},
            {"meta": {"dsn": "postgresql://u:[REDACTED]@h/db", "note": "token=[REDACTED]"}},
        ),
        (
            ("password=x", [1, 2.5, None, True], {1: "one"}),
            ("password=[REDACTED]", [1, 2.5, None, True], {1: "one"}),
        ),
        ("plain", "plain"),
        (42, 42),
        (None, None),
    ],
)
def test_redact_sensitive(value: object, expected: object) -> None:
    assert redact_sensitive(value) == expected


def test_redact_sensitive_extra_keys() -> None:
    value = {"ssn": "1", "SSN_": 2, "l": [{"Ssn": [3]}], "field": "ssn", "old": 4, "new": 5}
    expected = {
        "ssn": REDACTED,
        "SSN_": REDACTED,
        "l": [{"Ssn": REDACTED}],
        "field": "ssn",
        "old": REDACTED,
        "new": REDACTED,
    }
    assert redact_sensitive(value, frozenset({"ssn"})) == expected
    assert redact_sensitive(value) == value


def test_redact_sensitive_does_not_mutate_input() -> None:
    value = copy.deepcopy(DEEP_IN) | {"diff": {"field": "token", "old": "a", "new": "b"}}
    before = copy.deepcopy(value)
    out = redact_sensitive(value)
    assert value == before
    assert out is not value
    assert isinstance(out, dict)
    assert out["a"] is not value["a"]


SENSITIVE_KEY_VARIANTS = [
    "password",
    "DB_PASSWORD",
    "apiKey",
    "X-Api-Key",
    "client.secret",
    "two_factor_backup_codes",
    "set-cookie",
    "refreshToken",
]


def _plant(rng: random.Random, secret: str) -> object:
    """Build a value that carries the secret in one of the supported shapes."""
    shapes: list[object] = [
        {rng.choice(SENSITIVE_KEY_VARIANTS): secret},
        {rng.choice(SENSITIVE_KEY_VARIANTS): [secret, {"x": secret}]},
        {"field": rng.choice(SENSITIVE_KEY_VARIANTS), "old": secret, "new": secret},
        {"note": f"{rng.choice(SENSITIVE_KEY_VARIANTS)}={secret} done"},
        {"dsn": f"redis://user:{secret}@cache:6379/0"},
        {"body": f'{{"{rng.choice(SENSITIVE_KEY_VARIANTS)}": "{secret}"}}'},
        {"header": f"Authorization: Bearer {secret}"},
        {"url": f"https://x/cb?state=1&access_token={secret}&n=2"},
    ]
    return rng.choice(shapes)


def _wrap(rng: random.Random, value: object, depth: int) -> object:
    """Bury value at the given depth among harmless siblings."""
    for level in range(depth):
        if rng.random() < 0.5:
            value = {f"k{level}": value, "noise": [level, "text", None]}
        else:
            value = ["pad", value, {"n": level}]
    return value


def test_planted_secret_never_survives_at_any_depth() -> None:
    rng = random.Random(20240501)
    for i in range(500):
        secret = f"pl4nted{i}Zq"
        value = _wrap(rng, _plant(rng, secret), rng.randint(0, 10))
        out = redact_sensitive(value)
        assert secret not in repr(out)
        assert redact_sensitive(out) == out
