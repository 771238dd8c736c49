"""Logs: one JSON object per line from every process, or one readable line of text."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from service import logs
from service.integrity.keys import load_or_create_private_key
from service.producer.client import FAILURE_PREFIX
from tests.support.servers import Servers, new_queue_name

AUDITQ = Path(sys.executable).parent / "auditq"
PROCESS_TIMEOUT = 30.0  # seconds


@pytest.fixture
async def empty_database_url(servers: Servers) -> AsyncIterator[str]:
    """A database with nothing in it, so `auditq migrate` has work to do and logs it."""
    name = f"auditq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def child_env(servers: Servers, database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(
        AUDITQ_REDIS_URL=servers.redis_url,
        AUDITQ_DATABASE_URL=database_url,
        AUDITQ_QUEUE=new_queue_name(),
        AUDITQ_DATA_DIR=str(tmp_path),
        AUDITQ_LOG_FORMAT="json",
        AUDITQ_LOG_LEVEL="INFO",
        # The suite's servers' superuser, and a key of this test's own (a worker mints none).
        AUDITQ_ALLOW_PRIVILEGED_ROLE="1",
        AUDITQ_SEAL_KEY_FILE=str(tmp_path / "seal-key"),
    )
    load_or_create_private_key(tmp_path / "seal-key")
    return env


def parse_json_lines(stderr: bytes) -> list[dict[str, object]]:
    """Every line must be one JSON object with ts, level, logger and message."""
    records = []
    for line in stderr.decode().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, line
        records.append(record)
    return records


async def test_migrate_logs_one_json_object_per_line(
    servers: Servers, empty_database_url: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(AUDITQ),
        "migrate",
        env=child_env(servers, empty_database_url, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()
    records = parse_json_lines(stderr)
    # Not vacuous: a fresh database gets its partitions, and that is logged.
    assert any("made partitions" in str(r["message"]) for r in records), records
    assert b"schema applied" in stdout


async def test_worker_logs_one_json_object_per_line(
    servers: Servers, database_url: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(AUDITQ),
        "worker",
        env=child_env(servers, database_url, tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen, rest = b"", b""
    try:
        async with asyncio.timeout(PROCESS_TIMEOUT):
            # arq's own start-up line: third-party loggers go through the same formatter.
            while b"Starting worker" not in seen:
                line = await proc.stderr.readline()
                assert line, f"worker exited early: {seen.decode()}"
                seen += line
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (seen + rest).decode()
    records = parse_json_lines(seen + rest)
    assert any(str(r["logger"]).startswith("arq") for r in records), records


@contextlib.contextmanager
def formatted(log_format: str) -> Iterator[io.StringIO]:
    """Configure logging as the CLI does, into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logs.configure(log_format=log_format, level="INFO")
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


FAILURE_PAYLOAD = {
    "action": "config.updated",
    "entityType": "project",
    "entityId": "42",
    "userId": "u-ü-1",  # non-ASCII, quotes and backslashes must survive unchanged
    "requestId": 'req "7" \\ x',
    "errorName": "ConnectionError",
    "errorMessage": "Error 111 connecting to 127.0.0.1:1. Connection refused.",
}


@pytest.mark.unit
def test_json_keeps_the_failure_line_byte_identical_with_extra_fields() -> None:
    with formatted("json") as stream:
        # Exactly how service.producer.client writes its failure line.
        logging.getLogger("auditq").error(
            "%s%s",
            FAILURE_PREFIX,
            json.dumps(FAILURE_PAYLOAD),
            extra={"audit_failure": FAILURE_PAYLOAD, "task_id": "t-1"},
        )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    expected = "[AuditLog] Failed to queue audit event: " + json.dumps(FAILURE_PAYLOAD)
    assert record["message"].encode() == expected.encode()
    assert record["level"] == "ERROR"
    assert record["logger"] == "auditq"
    assert record["audit_failure"] == FAILURE_PAYLOAD
    assert record["task_id"] == "t-1"
    assert record["ts"].endswith("+00:00")


@pytest.mark.unit
def test_a_count_of_keys_in_a_log_line_is_not_taken_for_a_secret() -> None:
    """arq's start-up line counts the keys of its Redis database: a number, kept."""
    line = "redis_version=7.2.4 mem_usage=1.02M clients_connected=3 db_keys=12"
    with formatted("json") as stream:
        logging.getLogger("arq.worker").info("%s", line)
        logging.getLogger("auditq").info("api_keys=%s", "k3yv4lue9f")
    first, second = (json.loads(text)["message"] for text in stream.getvalue().splitlines())
    assert first == line
    assert "k3yv4lue9f" not in second


@pytest.mark.unit
def test_a_missing_key_is_reported_whole(tmp_path: Path) -> None:
    """The advice after a seal key's path is not read as that key's value."""
    from service.errors import ConfigError
    from service.ops.verification import public_key_path
    from service.settings import Settings

    settings = Settings(seal_key_file=tmp_path / "seal-key")
    with pytest.raises(ConfigError) as refused:
        public_key_path(settings, None)
    with formatted("json") as stream:
        logging.getLogger("auditq").error("verification failed: %s", refused.value)
    message = json.loads(stream.getvalue())["message"]
    assert "[REDACTED]" not in message and "--public-key FILE" in message, message


@pytest.mark.unit
def test_json_keeps_an_exception_on_the_same_line() -> None:
    with formatted("json") as stream:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("auditq.test").exception("it failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "it failed"
    assert "ValueError: boom" in record["exc_info"]


@pytest.mark.unit
def test_json_logs_an_extra_value_of_any_type() -> None:
    with formatted("json") as stream:
        logging.getLogger("auditq.test").info("odd", extra={"path": Path("/x"), "n": 3})
    record = json.loads(stream.getvalue())
    assert record["path"] == "/x"
    assert record["n"] == 3


@pytest.mark.unit
def test_text_is_one_readable_line_with_level_and_logger() -> None:
    message = FAILURE_PREFIX + json.dumps(FAILURE_PAYLOAD)
    with formatted("text") as stream:
        logging.getLogger("auditq").error("%s", message)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert " ERROR " in lines[0]
    assert " auditq: " in lines[0]
    assert lines[0].endswith(message)
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


@pytest.mark.unit
def test_text_logs_never_carry_control_characters_raw() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("auditq.test.control")
    logger.addHandler(handler)
    try:
        # A path as a hostile client sends it: a forged second line, a terminal escape.
        logger.warning("unhandled error on GET %s", "/x\r\n2026-01-01 INFO fake: ok\x1b[2J\u2028")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text, text
    assert "\u2028" not in text and "\\x0d\\x0a2026-01-01 INFO fake" in text
