"""The Node.js client (clients/node): its own tests run against the suite's Valkey, and every
event they expect stored is stored, with those values, by the real worker."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from service.queue.enqueue import load_functions
from service.queue.producer_acl import PRODUCER_USER, ensure_producer_user, with_user
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import running_worker

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
EXPRESS_EXAMPLE = ROOT / "docs" / "examples" / "express_example.mjs"
NPM_TIMEOUT = 600.0  # seconds: a first `npm ci` downloads the dev dependencies
RUN_TIMEOUT = 300.0  # seconds


def npm() -> str:
    """npm, with the package's dependencies installed (from the npm registry when missing)."""
    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI")
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run(
            [found, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=NPM_TIMEOUT,
        )
    return found


@pytest.fixture(scope="module")
def built() -> str:
    """npm, with dist/ built once for the module's tests: `npm run build` of the same sources
    gives the same dist/ (each test building it again took seconds and proved nothing more).
    The packed package of the Express test still builds through its own `prepack`."""
    npm_path = npm()
    subprocess.run([npm_path, "run", "build"], cwd=NODE_DIR, check=True, capture_output=True)
    return npm_path


async def stored_rows(settings: Settings, database_url: str, ids: list[str]) -> dict[str, Any]:
    """Run the worker until every id is stored; return the rows by id."""

    async def fetch() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT id::text, action, actor_id, entity_id, request_id, host(ip) AS ip,"
                " user_agent, method, path, metadata, received_via FROM audit_log"
                " WHERE id = ANY($1::uuid[])",
                ids,
            )
        finally:
            await conn.close()
        return {row["id"]: dict(row) for row in rows}

    async def all_stored() -> bool:
        return len(await fetch()) == len(ids)

    async with running_worker(settings):
        await wait_for(all_stored, within_s=60)
    return await fetch()


async def test_the_node_client_suite_passes_and_its_events_are_stored(
    settings: Settings, database_url: str, redis: aioredis.Redis, tmp_path: Path, built: str
) -> None:
    await load_functions(redis)  # as `auditq migrate` and every worker do: FCALL works
    report = tmp_path / "stored.jsonl"
    assert settings.redis_url
    env = {
        **os.environ,
        "AUDITQ_TEST_REDIS_URL": settings.redis_url,
        "AUDITQ_TEST_QUEUE": settings.queue,
        "AUDITQ_TEST_REPORT": str(report),
    }
    # `npm test` is `npm run build && node --test test/`: the module's build, then its tests.
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--test",
        "test/",
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode == 0, output.decode()[-6000:]

    expected = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(expected) >= 4
    rows = await stored_rows(settings, database_url, [e["id"] for e in expected])
    for want in expected:
        row = rows[want["id"]]
        assert row["received_via"] == f"redis:{settings.queue}"
        for name, value in want.items():
            got = json.loads(row[name]) if name == "metadata" else row[name]
            assert got == value, (want["id"], name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_express_example_records_each_request_with_its_context(
    settings: Settings, database_url: str, redis: aioredis.Redis, tmp_path: Path
) -> None:
    npm_path = npm()
    await load_functions(redis)
    # As clients/node/README.md says: the package packed from the repository (its `prepack`
    # builds dist/), installed with express into an application of its own.
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "package.json").write_text('{"name": "app", "private": true}\n')
    package = json.loads((NODE_DIR / "package.json").read_text())

    async def npm_run(*args: str, cwd: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            npm_path,
            *args,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), NPM_TIMEOUT)
        assert proc.returncode == 0, output.decode()[-6000:]

    await npm_run("pack", "--silent", "--pack-destination", str(tmp_path), cwd=NODE_DIR)
    tarball = tmp_path / f"auditq-client-{package['version']}.tgz"
    # Offline first: `make test` installed both (and what they need) for the client's own tests.
    quiet = ("--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
    express = f"express@{package['devDependencies']['express']}"
    await npm_run("install", *quiet, str(tarball), express, cwd=app_dir)
    assert not (app_dir / "node_modules" / "auditq-client").is_symlink()
    shutil.copy(EXPRESS_EXAMPLE, app_dir / "server.mjs")
    # As `auditq run`'s producer.env: a user that can only enqueue (its own name and queue).
    assert settings.redis_url
    user, password = f"{PRODUCER_USER}-{settings.queue}", secrets.token_hex(16)
    await ensure_producer_user(redis, settings.queue, password, user=user)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")},
        "AUDITQ_REDIS_URL": with_user(settings.redis_url, user, password),
        "AUDITQ_QUEUE": settings.queue,
        "AUDITQ_TRUSTED_PROXIES": "127.0.0.1",
        "PORT": str(port),
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "server.mjs",
        cwd=app_dir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def listening() -> bool:
                if proc.returncode is not None:
                    raise AssertionError("the example exited at start")
                try:
                    await http.get("/")
                except httpx.TransportError:
                    return False
                return True

            await wait_for(listening, within_s=60)
            response = await http.put(
                "/projects/42",
                headers={
                    "X-User": "ada",
                    "X-Request-ID": "node-1",
                    "X-Forwarded-For": "198.51.100.5",
                    "User-Agent": "ex/3",
                },
            )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # the example closes its client: a flush
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert response.status_code == 200, stderr.decode()
    assert response.headers["X-Request-ID"] == "node-1"
    event_id = response.json()["audit_event"]
    # Not a line on stderr: no failure, and no warning of a command the user may not run.
    assert stderr.decode() == ""
    rows = await stored_rows(settings, database_url, [event_id])
    await redis.execute_command("ACL", "DELUSER", user)
    row = rows[event_id]
    assert {k: row[k] for k in ("action", "actor_id", "entity_id", "request_id", "ip")} == {
        "action": "project.updated",
        "actor_id": "ada",
        "entity_id": "42",
        "request_id": "node-1",
        "ip": "198.51.100.5",
    }
    assert (row["user_agent"], row["method"], row["path"]) == ("ex/3", "PUT", "/projects/42")


# Keys and texts both clients must treat alike (both read service/redaction_rules.json).
SAME_KEYS = [
    *("password", "userPassword", "api_key", "apiKey", "x-api-key", "token_count"),
    *("max_tokens", "sessionId", "Authorization", "primary_key", "publicKey", "client_secret"),
    *("refresh_token", "access_token", "private_key", "password_hint", "passwordHash"),
    *("dbPassword", "githubToken", "cookie", "set-cookie", "credentials", "two_factor_secret"),
    *("backup_codes", "recovery_codes", "otp", "signature", "title", "name", "email", "note"),
    *("description", "status", "oauth", "keyboard", "monkey", "passenger", "bypass"),
    *("compass", "secretary", "tokens", "user_ssn", "foo_key", "pin", "cvv", "auth"),
    *("session", "hmac", "mfa", "bearer"),
    # Digits alone make no word: the last word of these is a final word (`key`, `sid`).
    *("key4", "password2", "connect.sid1", "v2key"),
    # Kelvin's K and Turkish I's read as K, I, i (a key is sensitive as written or so read).
    *("to\u212aen", "SESS\u0130ON_ID", "credent\u0131als", "api_\u212aey", "\u212aEY"),
    *("ti\u212aet", "p\u0130n", "passwo\u212a", "\u0130key", "t\u0131tle"),
    # Escapes as written in a key (JSON written by hand inside a string, decoded) are read too.
    *("to\\u212aen", "SESS\\u0130ON_ID", "api\\u005fkey", "\\u0073ecret", "ti\\u0074le"),
]
SAME_TEXTS = [
    "postgres://app:hunter2@db.internal:5432/prod",
    "Authorization: Bearer abc.def-ghi_123",
    "callback https://x.example/cb?access_token=zzz&n=1",
    "password=hunter2 user=ann",
    '{"password": "x", "user": "ann"}',
    "key AKIAIOSFODNN7REALKEY found",
    "token ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "basic authentication is off",
    "quarterly flamingo report",
    "redirect=https%3A%2F%2Fx%2F%3Ftoken%3Dabc%26n%3D1",
    "aq_0123456789abcdefghijklmnop",
    # Card numbers: masked to their last four when Luhn-valid, whatever the grouping.
    *("paid with 4111 1111 1111 1111 today", "6011-1111-1111-1117", "4111111111111111"),
    *("amex 3782 822463 10005, diners 3056-930902-5904", "visa 4222222222222."),
    "(5500000000000004)",
    *("cards 4111111111111111,5500000000000004;6011111111111117", "x 4111111111111111 1"),
    *("4000 0566 5566 5556 and 2223003122003222", "19 digits 4111111111111111110"),
    *('{"pan": "4111111111111111"}', "line\n4111 1111 1111 1111\tend", "\u00a04111111111111111"),
    # ... and left alone when they are not (a wrong check digit, an id, a time, a version…).
    *("4111111111111112", "4111 1111 1111 1112", "1765432101234563", "7111111111111111"),
    *("at 1765432101234", "2026-01-02T03:04:05.000Z", "01890a5d-ac96-774b-bcce-b302099a8057"),
    *("ref-4111111111111111", "4111111111111111-x", "x4111111111111111", "4111111111111111_"),
    *("v1.4111111111111111", "4111111111111111.5", "41111111111111111111", "4111 1111-1111 1111"),
    *("é4111111111111111", "4111111111111111é", "4111111111111111²", "+49 30 1234567"),
    *("411111111111111", "4111 1111 1111 111", "4111  1111 1111 1111", "ок 4111111111111111"),
    # Digits of other scripts: a card is one when it starts with 2 to 6 (Python's \d after it).
    "4111111111111" + "\u0661" * 3 + " and \u0664" + "\u0661" * 15,
    *("411111111111" + "\U0001d7cf" * 4, "411111111111" + "\U0001d7e3" * 4),
    "411111111111" + "\U0001d7cf" * 3 + "\U0001d7d0",  # the last digit a 2: not Luhn-valid
    # Spellings no rule names: a backslash before a separator, a key in its own quotes,
    # symbols before a colon, Kelvin's K and Turkish I's.
    *("path\\=C:\\tmp", '{"\\"title\\"": "Quarterly"}', "\U0001f512title\U0001f512: Quarterly"),
    *("status \u279c: shipped", "\U0001f389 launch: today", "T\u0130TLE=Quarterly"),
    "\u212aind: doc",
    # Escapes in text that is not decoded (a key, a change's field, a failure line): what they
    # spell is read too, up to three levels; what is no escape stays.
    *('"pass\\u0077ord": "Zq8vR2kLm4Tn6Wp1"', "pin\\tZq8vR2kLm4Tn6Wp1", "sec\\x72et: Zq8vR2kLm4"),
    *("\\r\\nAuthorization: Bearer Zq8vR2kLm4Tn6Wp1", 'auth\\\\\\"=\\\\\\"Zq8vR2kLm4Tn6Wp1\\\\\\"'),
    *('{"to\\u212aen": "Zq8vR2kLm4Tn6Wp1"}', "api\\u005fkey\\u003dZq8vR2kLm4Tn6Wp1"),
    *("tok\\U0001f512en=x", "path\\\\to\\\\file", "line\\nnext \\ud800 lone"),
    "pass\\ud83d\\udd12word=x",
    # A note between a name and its colon stands apart like a blank; without a colon, prose.
    *("password*: Zq8vR2kLm4", "password (new): Zq8vR2kLm4", "password [required]: Zq8vR2kLm4"),
    *("token #1: Zq8vR2kLm4", "see password (new) policy", "issue #12: token refresh fails"),
    # A card glued to a PEM END line.
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----378282246310005",
]
# Values (JSON numbers, keys, nesting) both clients must redact alike.
SAME_VALUES = [
    {"pan": 4111111111111111, "amex": 378282246310005, "at_us": 1765432101234563},
    {"ms": 1765432101234, "n": 4111111111111112, "f": 4.5},
    {"4111111111111111": "key", "list": ["5500 0000 0000 0004", 5500000000000004, True, None]},
    [{"field": "pan", "old": "4111111111111111", "new": "6011-1111-1111-1117"}],
    # A pair's name field may be "field" too (a value field beside it, no old/new).
    {"text": "x", "field": "auth"},
    # A key's escapes are read when its pre-check lets it through.
    {"see https://x/ \\u0070assword=Zq8vR2kLm4Tn6Wp1": 1, "basic \\u0070assword=Zq8vR2kLm4": 2},
    {"pass\\u0077ord=Zq8vR2kLm4Tn6Wp1 count": 3, "note \\u0070assword=Zq8vR2kLm4Tn6Wp1": 4},
]
PARITY_SCRIPT = """
const { KeyRule, Redactor } = await import(process.argv[1]);
const { failureLine } = await import(new URL("failures.js", `file://${process.argv[1]}`));
const [keys, texts, values] = JSON.parse(process.argv[2]);
const rule = new KeyRule(["ssn"]);
const redactor = new Redactor([]);
const sensitive = keys.map((k) => rule.isSensitive(k));
const redacted = values.map((v) => redactor.redact(v));
const flagged = [...texts, ...values].map((v) => redactor.encodedMayHoldSecret(JSON.stringify(v)));
const texted = texts.map((t) => redactor.redactText(t));
const failed = (t) => ({ action: "a.b", entity: { type: "doc", id: t } });
const lines = texts.map((t) => failureLine(failed(t), new Error(t), undefined, redactor));
console.log(JSON.stringify([sensitive, texted, redacted, flagged, lines]));
"""


def test_the_node_client_redacts_as_the_python_side_does(tmp_path: Path, built: str) -> None:
    from service.producer.failures import FAILURE_PREFIX, failure_payload
    from service.redaction import is_sensitive_key, redact_sensitive, redact_sensitive_in_string

    # The issue-26 shapes too (below): pairs, flags, encoded runs; and what no rule touches.
    texts = [*SAME_TEXTS, *PLANTED_TEXTS, *(c for c in PLANTED_CLEAN if isinstance(c, str))]
    values = [*SAME_VALUES, *PLANTED_VALUES, *(c for c in PLANTED_CLEAN if not isinstance(c, str))]
    done = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            PARITY_SCRIPT,
            str(NODE_DIR / "dist" / "redaction.js"),
            json.dumps([SAME_KEYS, texts, values]),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    node_keys, node_texts, node_values, node_flagged, node_lines = json.loads(done.stdout)
    python_keys = [is_sensitive_key(key, frozenset({"ssn"})) for key in SAME_KEYS]
    assert dict(zip(SAME_KEYS, node_keys, strict=True)) == dict(
        zip(SAME_KEYS, python_keys, strict=True)
    )
    assert dict(zip(texts, node_texts, strict=True)) == {
        text: redact_sensitive_in_string(text) for text in texts
    }
    assert node_values == [redact_sensitive(value) for value in values]
    # A failure line's values are text that is not decoded: their escapes are read too.
    error = type("Error", (Exception,), {})
    failed = [{"action": "a.b", "entity": {"type": "doc", "id": text}} for text in texts]
    assert dict(zip(texts, node_lines, strict=True)) == {
        text: FAILURE_PREFIX + json.dumps(failure_payload(event, error(text), None, frozenset()))
        for text, event in zip(texts, failed, strict=True)
    }
    # The Node pre-check lets through every text and value a rule changes.
    for item, redacted, flagged in zip(
        [*texts, *values], [*node_texts, *node_values], node_flagged, strict=True
    ):
        assert flagged or redacted == item, item
    assert node_texts[0] == "postgres://app:[REDACTED]@db.internal:5432/prod"


# Secrets only the pair, command-line and decoded-run rules find (issue 26): each text and
# value below holds one marked "NODEPLANT" and Python's rules redact it. Placed in an event's
# metadata, change, params and entity name, and in a failure line.
EXTRA_KEYS = frozenset({"ssn", "employee_code"})
PLANTED_TEXTS = [
    # Pairs written as text: tuples, name/value fields, value first, XML, YAML.
    'headers [("authorization", "NODEPLANT-p1"), ("accept", "json")]',
    'env name="API_TOKEN" value="NODEPLANT-p2"',
    '{"value": "NODEPLANT-p3", "name": "client_secret"}',
    "<soap><wsse:Password>NODEPLANT-p4</wsse:Password></soap>",
    "credentials:\n  - NODEPLANT-p5a\n  - NODEPLANT-p5b\nuser: ann",
    '{"Key": "db_password", "Value": "NODEPLANT-p6"}',
    "config: {\\n  secrets:\\n    - NODEPLANT-p7\\n}",
    '<add key="ApiKey" value="NODEPLANT-p8"/>',
    # Command-line flags, as text.
    "pg_dump --password NODEPLANT-c1 prod",
    "deploy -token NODEPLANT-c2 --verbose",
    "tool --api-key NODEPLANT-c3",
    # Escapes as written in a string (JSON written by hand into a field), a note before a colon.
    *('{"to\\u212aen": "NODEPLANT-w1"}', '{"SESS\\u0130ON_ID": "NODEPLANT-w2"}'),
    *("pass\\u0077ord=NODEPLANT-w3", "password (new): NODEPLANT-w4", "token #1: NODEPLANT-w5"),
    'argv ["run", "--client-secret", "NODEPLANT-c4"]',
    "backup --ssn NODEPLANT-c5 --dry-run",
    "\t--db-password\tNODEPLANT-c6",
    # URL-encoded runs, decoded (twice at most) and redacted as plain text.
    "next=https%253A%252F%252Fapp%252F%253Fpassword%253DNODEPLANT-d1",
    "u=https%3A%2F%2Fann%3ANODEPLANT-d2%40db.example%2F",
    "cb=%2Fx%3Ftoken%253DNODEPLANT-d3",
    "q=user%2540x%2526secret%253DNODEPLANT-d4",
    "redirect_uri=https%253A%252F%252Fu%253ANODEPLANT-d5%2540host%252F",
    "r=%2Fcb%3Femployee_code%253DNODEPLANT-d6",
    # Names spelled with Kelvin's K or a Turkish I (service/redaction.py _AS_ASCII).
    "to\u212aen=NODEPLANT-k1",
    "SESS\u0130ON_ID=NODEPLANT-k2",
    "credent\u0131als: NODEPLANT-k3",
    'export API_\u212aEY="NODEPLANT-k4"',
    '{"sess\u0130onId": "NODEPLANT-k5"}',
    "X-Api-\u212aey: NODEPLANT-k6",
    # A backslash before the separator; a key holding its own quotes.
    "DB_PASSWORD\\=NODEPLANT-e1",
    "api_key\\: NODEPLANT-e2",
    "spring.datasource.password\\=NODEPLANT-e3 user\\=ann",
    '{"\\"password\\"": "NODEPLANT-e4"}',
    "{'\\'token\\'': 'NODEPLANT-e5'}",
    '{"\'client_secret\'": "NODEPLANT-e6"}',
    '"\\"secret\\"" \\= NODEPLANT-e7',
    # Symbols between a name and its separator: arrows, dingbats, emoji, their joiners.
    "\U0001f512password\U0001f512: NODEPLANT-s1",
    "token \u279c: NODEPLANT-s2",
    "secret\u26a0\ufe0f: NODEPLANT-s3",
    "\U0001f468\u200d\U0001f4bbapi_key\U0001f468\u200d\U0001f4bb= NODEPLANT-s4",
    "password\u2192= NODEPLANT-s5",
    "\U0001f511 ssn \U0001f511: NODEPLANT-s6",
]
PLANTED_VALUES: list[Any] = [
    # Pairs as data: header lists, name/value mappings in any casing, two-item lists.
    [["X-Api-Key", "NODEPLANT-v1"], ["Accept", "json"]],
    {"Name": "DB_PASSWORD", "Value": "NODEPLANT-v2"},
    {"key": "api_token", "value": "NODEPLANT-v3"},
    [{"Key": "secret_token", "Value": "NODEPLANT-v4"}, {"Key": "team", "Value": "core"}],
    ["password", "NODEPLANT-v5"],
    # A key spelled with escapes as written (JSON written by hand, decoded).
    {"to\\u212aen": "NODEPLANT-k1", "note": {"SESS\\u0130ON_ID": "NODEPLANT-k2"}},
    {"ParameterKey": "DbPassword", "ParameterValue": "NODEPLANT-v6"},
    [["employee_code", "NODEPLANT-v7"], ["team", "core"]],
    # Argument lists.
    ["pg_dump", "--password", "NODEPLANT-a1", "prod"],
    ["deploy", "-token", "NODEPLANT-a2"],
    ["tool", "--api-key", "NODEPLANT-a3", "--verbose"],
    ["backup", "--ssn", "NODEPLANT-a4"],
    {"argv": ["x", "--client-secret", "NODEPLANT-a5"]},
    # Keys spelled with Kelvin's K or a Turkish I.
    {"to\u212aen": "NODEPLANT-kv1", "n": 1},
    {"SESS\u0130ON_ID": "NODEPLANT-kv2", "credent\u0131als": ["NODEPLANT-kv3"]},
    [{"api_\u212aey": {"value": "NODEPLANT-kv4"}}, ["--to\u212aen", "NODEPLANT-kv5"]],
    {"Name": "DB_PASS\u212aEY", "Value": "NODEPLANT-kv6"},
]
# What no rule touches stays as it is (in both clients).
PLANTED_CLEAN = [
    "run --verbose --output report.txt",
    'headers [("accept", "json"), ("x-trace", "abc")]',
    '{"name": "title", "value": "Quarterly"}',
    "<title>Quarterly</title>",
    "items:\n  - one\n  - two",
    "next=https%253A%252F%252Fapp%252F%253Fpage%253D2",
    ["password", "email"],
    {"name": "title", "value": "Quarterly"},
    ["run", "--output", "report.txt"],
]
PLANT_SCRIPT = """
const { AuditClient } = await import(process.argv[1] + "/index.js");
const { failureLine } = await import(process.argv[1] + "/failures.js");
const { Redactor } = await import(process.argv[1] + "/redaction.js");
const events = JSON.parse(process.argv[2]);
const client = new AuditClient(process.env.PLANT_REDIS_URL, {
  queue: process.env.PLANT_QUEUE, captureTimeoutMs: 10000,
});
const redactor = new Redactor(process.env.AUDITQ_REDACT_EXTRA_KEYS.split(","));
const lines = [];
for (const [i, event] of events.entries()) {
  if (i % 2 === 0) client.captureNowait(event); else await client.capture(event);
  lines.push(failureLine(event, new Error(`failed on ${event.entity.name}`), undefined, redactor));
}
await client.close(30000);
console.log(JSON.stringify(lines));
"""


def planted_events() -> list[dict[str, Any]]:
    """One event per planted text or value, the secret in every place an event holds one."""
    events = []
    for i, planted in enumerate([*PLANTED_TEXTS, *PLANTED_VALUES, *PLANTED_CLEAN]):
        # As JSON.stringify writes it: a letter beyond ASCII as it is, not a \uXXXX escape.
        text = planted if isinstance(planted, str) else json.dumps(planted, ensure_ascii=False)
        events.append(
            {
                "id": str(uuid.uuid4()),
                "ts": "2026-12-07T03:00:00+00:00",
                "action": "node.planted",
                "entity": {"type": "doc", "id": text[:200], "name": text},
                "metadata": {"value": planted, "text": text, "nested": {"items": [planted]}},
                "changes": [{"field": "note", "old": text, "new": planted}],
                "presentation": {"code": "audit.node.planted", "params": {"p": planted, "i": i}},
            }
        )
    return events


async def test_node_redacts_pairs_flags_and_encoded_runs_as_python_does_before_redis(
    settings: Settings, redis: aioredis.Redis, built: str
) -> None:
    """Attack (issue 26): the Node client had the key, token and card rules only, so a
    secret in a header list, a name/value pair, an XML element, a YAML list, after a
    command-line flag or in a double-encoded URL reached Redis in clear (the worker redacted
    it before storage; Redis must never hold it). Through captureNowait and capture, with
    AUDITQ_REDACT_EXTRA_KEYS: each queued event's metadata, change, params and entity name
    are byte for byte what the Python producer would queue, and the failure line is the
    Python client's."""
    from service.events import AuditEvent, finalize
    from service.producer.failures import FAILURE_PREFIX, failure_payload

    await load_functions(redis)
    events = planted_events()
    assert settings.redis_url
    env = {
        **os.environ,
        "PLANT_REDIS_URL": settings.redis_url,
        "PLANT_QUEUE": settings.queue,
        "AUDITQ_REDACT_EXTRA_KEYS": ",".join(sorted(EXTRA_KEYS)),
    }
    args = ("--input-type=module", "-e", PLANT_SCRIPT, str(NODE_DIR / "dist"), json.dumps(events))
    proc = await asyncio.create_subprocess_exec(
        "node", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()[-4000:]
    lines = json.loads(stdout)
    queued: dict[str, Any] = {}
    raw: list[str] = []
    for task_id in await redis.zrange(settings.queue, 0, -1):
        job = json.loads(await redis.get(f"arq:job:{task_id.decode()}"))
        raw.append(job["a"][0])
        payload = json.loads(job["a"][0])
        for event in payload if isinstance(payload, list) else [payload]:
            queued[event["id"]] = event
    assert "NODEPLANT" not in "".join(raw)
    differences = {}
    for event, line in zip(events, lines, strict=True):
        python = json.loads(finalize(msgspec.convert(event, AuditEvent), extra_keys=EXTRA_KEYS)[1])
        node = queued[event["id"]]
        for part in ("metadata", "changes"):
            if node[part] != python[part]:
                differences[(event["entity"]["name"], part)] = (node[part], python[part])
        if node["presentation"]["params"] != python["presentation"]["params"]:
            differences[(event["entity"]["name"], "params")] = (
                node["presentation"]["params"],
                python["presentation"]["params"],
            )
        if node["entity"] != python["entity"]:
            differences[(event["entity"]["name"], "entity")] = (node["entity"], python["entity"])
        error = type("Error", (Exception,), {})(f"failed on {event['entity']['name']}")
        want = FAILURE_PREFIX + json.dumps(failure_payload(event, error, None, EXTRA_KEYS))
        if line != want:
            differences[(event["entity"]["name"], "failure line")] = (line, want)
    assert not differences
    for event in events[-len(PLANTED_CLEAN) :]:  # no secret: left alone by both
        assert queued[event["id"]]["metadata"]["value"] == event["metadata"]["value"]
