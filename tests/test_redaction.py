"""Tests for secret redaction in audit payloads and strings."""

import copy
import datetime
import functools
import json
import logging
import random
import sys
import time
import uuid

import msgspec
import pytest

from service import redaction
from service.api.errors import error_response
from service.errors import InvalidEvent
from service.events import (
    Actor,
    AuditEvent,
    Change,
    Entity,
    Presentation,
    RequestInfo,
    check_complete,
    encode,
    finalize,
    redact_event,
)
from service.logs import JsonFormatter, RedactingFilter
from service.ops.task_views import redacted_payload
from service.queue.jobs import serialize_job
from service.redaction import (
    REDACTED,
    SENSITIVE_KEYS,
    is_sensitive_key,
    may_hold_secret,
    may_hold_secret_json,
    redact_sensitive,
    redact_sensitive_in_string,
    redact_strings,
    strings_needing_rules,
)

pytestmark = pytest.mark.unit  # needs no server: `pytest -m unit`

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
        "https://x/cb?code=[REDACTED]&access_token=[REDACTED]&state=2",
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


# The word rule for keys: (key, sensitive). The brief's compound and plural names, and the
# false positives the descriptors keep readable (see the module docstring for the costs).
KEY_WORD_CASES = [
    *[
        (key, True)
        for key in (
            "tokens",
            "secrets",
            "passwords",
            "cookies",
            "credential",
            "secret_key",
            "aws_secret_access_key",
            "private_key_pem",
            "db_password",
            "userPassword",
            "x-api-key",
            "X-API-KEY",
            "password2",
            "password_confirmation",
            "passphrase",
            "pwd",
            "session_id",
            "sessionId",
            "jwt",
            "otp",
            "totp_seed",
            "two_factor_secret",
            "twoFactorBackupCodes",
            "2fa_backup_codes",
            "mfa_code",
            "user.passwordHash",
            "PASSWORD_HASH",
            "id_token",
            "csrftoken",
            "AccountKey",
            "signing_key",
            "X-Amz-Signature",
            "pass",
            "paSSwD",
            "session",  # a session cookie's usual name
            # Plural secret words: each key of the list is one.
            "api_keys",
            "ssh_keys",
            "private_keys",
            "signing_keys",
            "apiKeys",
        )
    ],
    *[
        (key, False)
        for key in (
            "token_count",
            "password_hint",
            "password_changed_at",
            "token_type",
            "cookie_consent",
            "max_tokens",
            "num_tokens",
            "secret_name",
            "tokenizer",
            "author",
            "passing",
            "bypass",
            "secretary",
            "keyboard",
            "monkey",
            # A count of keys (arq's start-up line says db_keys=12) holds no key.
            "keys",
            "db_keys",
            "num_keys",
        )
    ],
]


def test_a_map_of_keys_still_loses_the_secret_keys_it_holds() -> None:
    """`keys` alone names no secret, but what it holds is read by the same rules."""
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    value = {"keys": {"private": pem, "private_key": "k3yv4lue", "apiKey": "a9k3yv4lue"}}
    out = repr(redact_sensitive(value))
    assert "MIIEvQ" not in out and "k3yv4lue" not in out
    text = "keys: {private_key: k3yv4lue, api_key: a9k3yv4lue} db_keys=12"
    redacted = redact_sensitive_in_string(text)
    assert "k3yv4lue" not in redacted and "db_keys=12" in redacted


@pytest.mark.parametrize(("key", "sensitive"), KEY_WORD_CASES)
def test_keys_are_matched_on_their_words(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive
    redacted = redact_sensitive({key: "v4lue"})
    assert redacted == ({key: REDACTED} if sensitive else {key: "v4lue"})
    # The same rule for a key in text: key=value, "key": "value", and a change's field.
    assert ("v4lue" in redact_sensitive_in_string(f"{key}=v4lue")) is not sensitive
    assert ("v4lue" in redact_sensitive_in_string(json.dumps({key: "v4lue"}))) is not sensitive


@pytest.mark.parametrize("field", ["password2", "user.passwordHash", "tokens", "db_password"])
def test_a_change_whose_field_names_a_secret_loses_both_values(field: str) -> None:
    event = AuditEvent(
        action="user.updated", changes=[Change(field=field, old="0ld-v4l", new="n3w-v4l")]
    )
    done, data = finalize(event)
    assert done.changes == [Change(field=field, old=REDACTED, new=REDACTED)]
    assert b"0ld-v4l" not in data and b"n3w-v4l" not in data


# The value rule: (text, the credential that must not survive).
VALUE_CASES = [
    ("/login?token=tq1x&next=/", "tq1x"),
    ("/cb?code=1&access_token=at2x&state=s", "at2x"),
    ("/x?X-Amz-Signature=sg3x&X-Amz-Credential=AKIA", "sg3x"),
    ("https://u:pw4x@host/db", "pw4x"),
    ("Authorization: Bearer br5xLongEnough.Token", "br5xLongEnough"),
    ("Basic dXNlcjpwYXNzd29yZDY=", "dXNlcjpwYXNzd29yZDY="),
    ("failed: password=pw7x", "pw7x"),
    ("cfg secret: sc8x", "sc8x"),
    ('{"api_key": "ak9x"}', "ak9x"),
    ("redirect=https%3A%2F%2Fx%2F%3Ftoken%3Dtk10x%26n%3D1", "tk10x"),
    ("Cookie: sid=ck11x; theme=dark", "ck11x"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMiJ9.c2lnbmF0dXJlMTJ4 end", "c2lnbmF0dXJlMTJ4"),
    ("jwt eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMyJ9. end", "eyJzdWIiOiIxMyJ9"),
    (
        "key -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk14x\n"
        "-----END OPENSSH PRIVATE KEY-----",
        "b3BlbnNzaC1rZXk14x",
    ),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQ15xcut", "MIIEvQ15xcut"),  # no END line: to the end
    ("uploaded with AKIAIOSFODNN7EXAMPL6 today", "AKIAIOSFODNN7EXAMPL6"),
    ("AKIAIOSFODNN7EXAMPL7:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE17", "wJalrXUtnFEMI"),
    ("aws_secret_access_key = wJalrXUtnFEMI18xK7MDENGbPxRfiCYEXAMPLE", "wJalrXUtnFEMI18x"),
    ("gh ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "A1b2C3d4E5f6G7h8"),
    ("gho_" + "Z" * 36, "Z" * 36),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "11ABCDEFG0123456789"),
    ("glpat-AbCdEf0123456789xYz_", "AbCdEf0123456789xYz"),
    ("xoxb-1234567890-0987654321-AbCdEfGhIj", "0987654321-AbCdEfGhIj"),
    ("xoxp-1234567890-abc", "1234567890-abc"),
    ("sk_live_51HabcdefGHIJKL0123", "51HabcdefGHIJKL0123"),
    ("rk_live_51HabcdefGHIJKL0124", "51HabcdefGHIJKL0124"),
    ("aq_" + "Xy9-_" * 8 + "abc", "Xy9-_Xy9-_Xy9"),
    ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234567890abcdef"),
    ("https://hooks.slack.com/services/T000/B000/XXXXhook29", "XXXXhook29"),
]


@pytest.mark.parametrize(("text", "secret"), VALUE_CASES)
def test_credentials_in_any_string_are_redacted(text: str, secret: str) -> None:
    out = redact_sensitive_in_string(text)
    assert secret not in out, out
    assert REDACTED in out
    assert redact_sensitive_in_string(out) == out
    # Whatever key holds it, and where in an event it is.
    assert secret not in json.dumps(redact_sensitive({"note": text, "list": [text]}))


@pytest.mark.parametrize("text", [c[0] for c in VALUE_CASES] + [c[0] for c in STRING_CASES])
def test_the_precheck_passes_everything_a_rule_acts_on(text: str) -> None:
    assert may_hold_secret(text)
    assert may_hold_secret_json(json.dumps({"v": text}).encode())


@pytest.mark.parametrize("key", [key for key, sensitive in KEY_WORD_CASES if sensitive])
def test_the_precheck_passes_every_sensitive_key(key: str) -> None:
    assert may_hold_secret(key) and may_hold_secret_json(json.dumps({key: 1}).encode())


def test_the_precheck_knows_the_extra_keys() -> None:
    extra = frozenset({"Employee-Badge"})
    assert not may_hold_secret("employee_badge=1")
    assert may_hold_secret("employee_badge=1", extra)
    assert may_hold_secret_json(b'{"employeeBadge":1}', extra)
    assert redact_sensitive({"employeeBadge": 1}, extra) == {"employeeBadge": REDACTED}


def test_every_string_of_an_event_is_redacted_and_ids_stay_usable() -> None:
    tokenish = "ghp_" + "Q" * 36
    event = AuditEvent(
        action="user.login",
        id=uuid.UUID("0190d6a8-7a36-7b7e-8c1d-3f5a2b9c4d10"),
        tenant="acme token=tn1",
        source="svc password: src2",
        category="auth",
        actor=Actor(id=tokenish, type="user", name="bob api_key=an3", email="bob@example.com"),
        entity=Entity(type="doc", id="doc-42", name="https://u:en4@h/x"),
        request=RequestInfo(
            id="req-1",
            ip="10.0.0.1",
            path="/login?token=pa5&x=1",
            user_agent="bot (Bearer ua6LongToken.abc)",
            method="POST",
        ),
        presentation=Presentation(code="audit.user.login", params={"secret": "pp7", "n": 1}),
        metadata={"note": "plain"},
    )
    done, data = finalize(event)
    for secret in ("tn1", "src2", tokenish, "an3", "en4", "pa5", "ua6LongToken", "pp7"):
        assert secret.encode() not in data, secret
    assert done.id == event.id and done.entity is not None and done.entity.id == "doc-42"
    assert done.request is not None and done.request.ip == "10.0.0.1"
    assert done.request.path == "/login?token=[REDACTED]&x=1"
    assert done.actor is not None and done.actor.email == "bob@example.com"
    assert finalize(done)[1] == data  # redacting twice changes nothing


def test_a_clean_event_is_not_rebuilt() -> None:
    event = AuditEvent(
        action="document.viewed",
        actor=Actor(id="user-1", type="user", name="Ann"),
        metadata={"page": 3, "tags": ["a", "b"]},
        changes=[Change(field="title", old="a", new="b")],
    )
    done, _ = finalize(event)
    assert redact_event(done) is done
    assert done.metadata is event.metadata  # not even copied


def test_extra_keys_reach_task_views_arq_results_error_bodies_and_logs() -> None:
    extra = frozenset({"badge"})
    payload = json.dumps([{"action": "a.b", "metadata": {"badge": "bdg1"}}])
    assert "bdg1" not in json.dumps(redacted_payload(payload, extra))
    assert "bdg1" not in json.dumps(redacted_payload(payload[:-2], extra))  # not JSON
    result = {"t": 1, "f": "store_events", "a": [payload], "k": {}, "s": False, "r": "x"}
    assert b"bdg1" not in serialize_job(result, extra)
    assert b"bdg1" not in serialize_job({**result, "s": True}, extra)
    body = error_response(400, "invalid_parameter", "bad badge=bdg1", extra_keys=extra).body
    assert isinstance(body, bytes) and b"bdg1" not in body
    record = logging.makeLogRecord(
        {"msg": "saw %s", "args": ("badge: bdg1",), "audit_failure": {"m": "badge=bdg1"}}
    )
    RedactingFilter(extra).filter(record)
    assert "bdg1" not in record.getMessage() and "bdg1" not in repr(record.__dict__)


def test_an_event_redacted_already_is_not_rebuilt() -> None:
    event = AuditEvent(
        action="user.login",
        metadata={"password": "hunter2", "n": 1},
        changes=[Change(field="password", old="a", new="b")],
        request=RequestInfo(path="/login?token=tk1"),
    )
    _, data = finalize(event)
    again = msgspec.json.decode(data, type=AuditEvent)  # as the worker reads it
    assert redact_event(again) is again


# Text that spells the event's own layout (its keys, quotes, brackets): the redaction finds
# where each part of an event is in its JSON, and must not be misled by a value that looks
# like the start or end of another part.
_LAYOUT_DECOYS = {
    "category": '","tenant":"t","source":"s',
    "tenant": '"},"request":{"path":"/',
    "source": ',"source":"',
    "actor.name": '","name":"n',
    "entity.name": '\\","id":"',
    "request.user_agent": ',"changes":[{"field":"f"}],"metadata":{',
}
_NESTED_DECOY = {
    "changes": [{"field": "f"}],
    "metadata": {"m": 1},
    "presentation": {"code": "c", "params": {"p": 1}},
    "source": "s",
    "params": {"q": 2},
}


_STRUCTS = ("actor", "entity", "request")


def _event_with(place: str, secret: str) -> AuditEvent:
    """An event whose one secret is at `place`, every other part holding layout decoys."""
    texts = dict(_LAYOUT_DECOYS)
    if place in ("category", "tenant", "source") or place.split(".")[0] in _STRUCTS:
        texts[place] = f"token={secret}"
    decoy = copy.deepcopy(_NESTED_DECOY)
    changes = [Change(field="title", old=decoy, new="x")]
    metadata: dict[str, object] = {"decoy": decoy, "note": _LAYOUT_DECOYS["request.user_agent"]}
    params: dict[str, object] = {"decoy": decoy}
    code = "audit.user.updated"
    if place == "changes.field":
        changes.append(Change(field=f"see https://u:{secret}@h/", old=1, new=2))
    elif place == "changes.old":
        changes.append(Change(field="config", old={"api_key": secret}, new=None))
    elif place == "changes.new":
        changes.insert(0, Change(field="password", old=None, new=secret))
    elif place == "metadata":
        metadata["deep"] = {"list": [{"client_secret": secret}]}
    elif place == "params":
        params["secret"] = secret
    elif place == "presentation.code":
        code = f"token={secret}"
    return AuditEvent(
        action="user.updated",
        id=uuid.UUID("0190d6a8-7a36-7b7e-8c1d-3f5a2b9c4d10"),
        ts=datetime.datetime(2026, 12, 7, 10, tzinfo=datetime.UTC),
        category=texts.get("category"),
        tenant=texts.get("tenant"),
        source=texts.get("source"),
        actor=Actor(
            id=texts.get("actor.id", "user-1"),
            type="user",
            name=texts.get("actor.name"),
            email=texts.get("actor.email"),
        ),
        entity=Entity(
            type=texts.get("entity.type", "doc"),
            id=texts.get("entity.id", "d-1"),
            name=texts.get("entity.name"),
        ),
        request=RequestInfo(
            id=texts.get("request.id"),
            user_agent=texts.get("request.user_agent"),
            method=texts.get("request.method"),
            path=texts.get("request.path"),
        ),
        changes=changes,
        metadata=metadata,
        presentation=Presentation(code=code, params=params),
    )


_SECRET_PLACES = [
    *("category", "tenant", "source", "actor.id", "actor.name", "actor.email", "entity.type"),
    *("entity.id", "entity.name", "request.id", "request.user_agent", "request.path"),
    *("presentation.code", "changes.field", "changes.old", "changes.new", "metadata", "params"),
]


@pytest.mark.parametrize("place", _SECRET_PLACES)
def test_a_secret_is_redacted_wherever_the_event_holds_it_and_nothing_else(place: str) -> None:
    """One secret at one place of an event whose other parts hold text spelling the event's
    own layout: the redaction (which finds each part of the event in its JSON) redacts it,
    with finalize, redact_event and check_complete alike, and leaves every decoy as it was."""
    secret = "Zq9pl4ced"
    event = _event_with(place, secret)
    clean = msgspec.json.decode(encode(_event_with(place, "Zq9none")))
    for data in (
        finalize(event)[1],
        finalize(event, validate=True)[1],
        encode(redact_event(event)),
        encode(check_complete(event)),
    ):
        assert secret.encode() not in data, place
        redacted = msgspec.json.decode(data)
        # Everything but the secret's own string is as it was.
        assert _without(redacted, REDACTED) == _without(clean, "Zq9none"), place


def _without(value: object, secret: str) -> object:
    """`value` with every string that holds `secret` (or a redaction) made one marker."""
    if isinstance(value, str):
        return "*" if secret in value or REDACTED in value else value
    if isinstance(value, dict):
        return {key: _without(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_without(item, secret) for item in value]
    return value


def test_a_text_field_only_its_text_pre_check_reads_is_redacted_as_before() -> None:
    """A stem holding a tab (`pin\t`) or a backslash (`auth\"`, JSON inside JSON) is found
    by the pre-check of a string as text, but not in the event's JSON, where the tab and
    the backslash are escaped: an event that needs redaction has such a field redacted as
    every string of it used to be, whatever part the scan matched in."""
    event = AuditEvent(
        action="user.updated",
        tenant="pin\tq9x8a7b6",
        source='{\\"auth\\": \\"q8x7a6b5\\"}',
        metadata={"password": "hunter2"},
    )
    for done in (finalize(event)[0], redact_event(event)):
        assert done.tenant == "pin\t[REDACTED]"
        assert done.source == '{\\"auth\\": \\"[REDACTED]\\"}'


def test_redact_event_masks_a_card_number_another_rule_uncovers() -> None:
    """No card number stands in "-----END … KEY-----3782…" (a dash before it), so the scan
    of the event sees none; once the key is redacted it does: redact_event (cards unless
    told otherwise) masks it, as it always did."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    event = AuditEvent(action="user.updated", tenant=pem + "378282246310005")
    assert redact_event(event).tenant == "[REDACTED]***********0005"


def test_a_redaction_that_makes_a_field_too_long_is_refused() -> None:
    """Redacting can lengthen a string ("pw=b" -> "pw=[REDACTED]"): a field it takes past
    its limit is refused as the worker would refuse it, however the event is redacted."""
    method = RequestInfo(method="pwd=a pw=b")  # 10 characters, 28 once redacted; at most 16
    field = Change(field="y" * 1005 + " https://u:p@h", old=1)  # 1019, then 1028; at most 1024
    for changed, where in ((method, "request.method"), (field, "changes[0].field")):
        event = AuditEvent(
            action="user.updated",
            id=uuid.UUID("0190d6a8-7a36-7b7e-8c1d-3f5a2b9c4d10"),
            ts=datetime.datetime(2026, 12, 7, 10, tzinfo=datetime.UTC),
            category="user",
            presentation=Presentation(code="audit.user.updated"),
            **({"request": changed} if where.startswith("request") else {"changes": [changed]}),
        )
        limit = 16 if where.startswith("request") else 1024
        message = f"once redacted: Expected `str` of length <= {limit} - at `$.{where}`"
        for redact in (
            finalize,
            functools.partial(finalize, validate=True),
            redact_event,
            check_complete,
        ):
            with pytest.raises(InvalidEvent) as refused:
                redact(event)
            assert str(refused.value) == message


def test_a_logged_traceback_is_redacted() -> None:
    try:
        raise ValueError("bad dsn postgresql://app:tb1pw@db/app")
    except ValueError:
        record = logging.makeLogRecord({"msg": "boom", "exc_info": sys.exc_info()})
    RedactingFilter().filter(record)
    for formatter in (logging.Formatter(), JsonFormatter()):
        text = formatter.format(record)
        assert "ValueError" in text and "tb1pw" not in text


# The one pre-check over many strings (redact_strings, the event's own fields) must let
# through every string its own pre-check would: pieces that hold stems, keywords, card
# numbers, line breaks and letters whose lowercase is longer (which moves offsets).
_PIECES = [
    "plain words",
    "password=hunter2",
    "x-auth",
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "4111 1111 1111 1111",
    "line\nbreak token: t0k3nv4lue",
    "İstanbul",
    "ß",
    "",
    "sk",
    "eyJhbGciOiJIUzI1NiJ9",
    "connect.sid=s%3Aabc",
    "12",
    "report\n",
    "\n",
]


@pytest.mark.unit
@pytest.mark.parametrize("cards", [True, False])
def test_one_precheck_over_many_strings_lets_through_what_each_would(cards: bool) -> None:
    rng = random.Random(26)
    for _ in range(2000):
        texts = [
            "".join(rng.choices(_PIECES, k=rng.randint(0, 3))) for _ in range(rng.randint(1, 8))
        ]
        flagged = set(strings_needing_rules(texts, cards=cards))
        for index, text in enumerate(texts):
            if may_hold_secret(text, cards=cards):
                assert index in flagged, (texts, index)
        expected = [redact_sensitive_in_string(text, cards=cards) for text in texts]
        assert redact_strings(texts, cards=cards) == expected, texts


def test_an_integer_that_no_card_starts_with_stays_a_number() -> None:
    """A card number starts with 2 to 6, as a JSON number as in text: a Luhn-valid timestamp
    in microseconds (16 digits from 1) or nanoseconds stays, even beside a card number."""
    micros, nanos = 1765432101234563, 1765432101234567890
    event = finalize(
        AuditEvent(
            action="payment.captured",
            metadata={"card": "4111111111111111", "at_us": micros, "at_ns": nanos},
        )
    )[0]
    assert event.metadata == {"card": "************1111", "at_us": micros, "at_ns": nanos}
    assert redact_sensitive({"at_us": micros, "at_ns": nanos}) == {"at_us": micros, "at_ns": nanos}
    assert redact_sensitive({"pan": 5500000000000004}) == {"pan": "************0004"}


EVENT_BOUND = 64 * 1024


@pytest.mark.parametrize(
    "unit",
    [
        *(keyword + filler * 40 for keyword in ("curl", "mysql", "mariadb") for filler in " =\t"),
        "curl -H ",
        "curl -u ",
        "curl --header ",
        "curl\n",
        "mysql -p",
        # A URL's "scheme://user:" again and again: the password's end was looked for from each.
        *("a://b:", "a://b:@", "x://u:p", "a%3A%2F%2Fb%3A", "a%253A%252F%252Fb%253A"),
    ],
)
def test_a_keyword_repeated_over_the_event_bound_is_redacted_in_linear_time(unit: str) -> None:
    """Attack: 64 KiB (the event bound) of one keyword again and again. gitleaks' curl rules
    (and auditq's mysql rule) scan from a keyword to the end of its line(s); Python's and
    Node's backtracking engines retry from every occurrence, so the cost was quadratic (a
    minute of worker CPU for one event). Each occurrence now ends the previous one's scan. A
    real credential after the flood is still found."""
    flood = (unit * (EVENT_BOUND // len(unit)))[: EVENT_BOUND - 5000] + "x" * 5000
    started = time.process_time()
    redact_sensitive_in_string(flood)
    spent = time.process_time() - started
    assert spent < 0.5, f"{spent:.2f} s of CPU for {unit!r}"
    bearer = "Zq8vR2kLm4Tn6Wp1"
    text = flood[:-5000] + f"\ncurl -H 'Authorization: Bearer {bearer}' https://x.test/"
    assert bearer not in redact_sensitive_in_string(text)


@pytest.mark.skipif(redaction.hyperscan is None, reason="the Hyperscan pre-check")
@pytest.mark.parametrize("pattern", [*redaction.STEMS, *redaction.KEYWORDS])
def test_the_scan_finds_what_each_stem_and_keyword_would_find(pattern: str) -> None:
    # The scan leaves out a pattern that holds another (`password` holds `pass`): every
    # text holding it still gets the verdict its stems and keywords give, one by one.
    data = json.dumps({"v": f"<{pattern}>", "w": f"x{pattern.upper()}1"}).encode()
    low = data.lower()
    stems = any(stem.encode() in low for stem in redaction.STEMS)
    keywords = any(keyword.encode() in low for keyword in redaction.KEYWORDS)
    # A stem sends the text to every rule: with one, whether a keyword is there too is moot.
    expected = redaction._STEMS if stems else redaction._KEYWORDS if keywords else 0
    scanner = redaction._PRECHECK.scanner
    assert scanner is not None
    verdict = scanner.scan(data)
    assert (redaction._STEMS if verdict & redaction._STEMS else verdict) == expected
    assert bool(scanner.scan(data, scanner.on_match_needed) & redaction._STEMS) == stems
    assert bool(scanner.scan_outside_uuids(data) & redaction._STEMS) == stems


@pytest.mark.skipif(redaction.hyperscan is None, reason="the Hyperscan pre-check")
def test_the_scan_keeps_a_pattern_whose_held_hex_pattern_an_id_hides() -> None:
    # `bead` alone, inside the id, is no match; `bead"` ends past the id's last digit: a
    # match, which the scan must not leave to `bead`.
    scanner = redaction._Scanner(["bead", 'bead"'], 1, {0: 4})
    data = b'{"id":"0190d6a8-7a36-7b7e-8c1d-3f5a2b9cbead","n":1}'
    assert scanner.scan(data) == redaction._KEYWORDS
    assert scanner.scan(data.replace(b"bead", b"beef")) == 0


# A part whose matches all lie in its own keys gets only its keys' rules (redact_keys_holding);
# each of these has a match elsewhere too, or a key that asks more, and must still be walked.
KEYS_HOLDING_CASES = [
    ({"password": "hunter2", "note": "plain words"}, "hunter2"),  # the shortcut's own case
    ({"password": "a", "note": "then token=LEAK1 again"}, "LEAK1"),  # a value holds a match
    ({"password": "a", "nested": {"api_key": "LEAK2"}}, "LEAK2"),  # a nested key does
    ({"password": "a", "hdrs": [["Authorization", "Bearer LEAK3xxxxxxxxxxxx"]]}, "LEAK3"),
    ({"password": "a", "argv": ["pg_dump", "--password", "LEAK4"]}, "LEAK4"),
    ({"key": "api_token", "value": "LEAK5"}, "LEAK5"),  # a pair: its name is a value
    ({"Key": "http.method", "Value": "GET"}, None),  # a pair's name field: not a secret
    ({"field": "password", "old": "LEAK6", "new": "LEAK7"}, "LEAK6"),  # a change diff
    ({"secretary": "Bob", "password": "LEAK8"}, "LEAK8"),  # a key that matches, not sensitive
    ({"password": "a", "to\u212aen": "LEAK9"}, "LEAK9"),  # sensitive read as ASCII
    ({"password": "a", "n": 4111111111111111}, "4111111111111111"),  # a card number value
    ({"ghp_" + "a" * 36: True, "password": "LEAK10"}, "LEAK10"),  # a key that is a credential
    ({1: "x", "password": "LEAK11"}, "LEAK11"),  # a key that is no string
]


@pytest.mark.parametrize(("metadata", "planted"), KEYS_HOLDING_CASES)
def test_a_part_redacted_by_its_keys_alone_is_what_the_walk_makes_of_it(
    metadata: dict[object, object], planted: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import events

    event = AuditEvent(action="user.updated", metadata=metadata, presentation=None)
    fixed = msgspec.structs.replace(event, id=uuid.uuid4(), ts=datetime.datetime.now(datetime.UTC))
    done, data = finalize(fixed)
    if planted is not None:
        assert planted.encode() not in data
    monkeypatch.setattr(events, "redact_keys_holding", lambda *args, **kwargs: None)
    walked, walked_data = finalize(fixed)
    assert done == walked and data == walked_data
    assert done.metadata == redact_sensitive(metadata)


def test_the_keys_alone_redact_a_part_whose_matches_all_lie_in_its_keys() -> None:
    metadata = {"i": 0, "note": "quarterly report", "password": "hunter2", "db_token": "t0k"}
    # Each sensitive key's one or more matches, counted in the scan of an encoded event.
    data = encode(AuditEvent(action="user.updated", metadata=metadata))
    found = redaction.json_matches(data)
    assert found is not None and found.spans is not None
    matches = len(found.spans)
    assert redaction.redact_keys_holding(metadata, matches, cards=False) == {
        "i": 0, "note": "quarterly report", "password": REDACTED, "db_token": REDACTED,
    }  # fmt: skip
    # One match fewer or more than its keys hold: a value may hold one, the part is walked.
    assert redaction.redact_keys_holding(metadata, matches + 1, cards=False) is None
    assert redaction.redact_keys_holding(metadata, matches - 1, cards=False) is None
