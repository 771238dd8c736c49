"""A hostile producer with Redis access, interleaving whatever it likes with honest clients:
no honest client's accepted event may disappear or be stored twice, and every bad input ends
as a failed task with its reason."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from service.events import ACTION_PATTERN, AuditEvent, finalize
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_FUNCTION, ENQUEUE_SCRIPT, load_functions
from service.queue.jobs import RAW_BYTES_PREFIX
from service.queue.keys import live_key
from service.queue.producer_acl import PRODUCER_USER, ensure_producer_user, with_user
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import running_worker
from workers.runner import worker_state

SEED = int(os.environ.get("AUDITQ_TEST_SEED", random.randrange(1 << 30)))
CLIENTS = 4
EVENTS_PER_CLIENT = 150
ATTACKS = 60


def _complete(action: str = "doc.viewed", **fields: Any) -> dict[str, Any]:
    """An event as auditq's client sends it: id, ts, category and presentation filled."""
    _, data = finalize(AuditEvent(action="doc.viewed"))
    event: dict[str, Any] = json.loads(data)
    event.update(fields)
    event["action"] = action
    return event


def _array(*events: dict[str, Any]) -> str:
    return json.dumps(list(events))


# Each attack: (name, payload maker, sent with the "finalized" flag, holds events a reader
# would count). The marker makes its events findable in the dead letter.
Attack = tuple[str, Callable[[random.Random, str], str | bytes], bool]

ATTACK_KINDS: list[Attack] = [
    ("random bytes", lambda r, m: m.encode() + r.randbytes(r.randrange(1, 200)), True),
    ("random bytes, no flag", lambda r, m: m.encode() + r.randbytes(r.randrange(1, 200)), False),
    ("empty array", lambda r, m: "[ ]", True),
    ("two closing brackets", lambda r, m: f'[{{"action":"a.b","metadata":{{"m":"{m}"}}}}]]', True),
    ("two arrays", lambda r, m: f'[{{"a":1,"m":"{m}"}}]x[1]', True),
    ("array of numbers", lambda r, m: f'[1, "{m}"]', True),
    ("array of arrays", lambda r, m: f'[["{m}"]]', True),
    ("unclosed string", lambda r, m: f'[{{"action":"a.b","m":"{m}]', True),
    ("bad action", lambda r, m: _array(_complete("NOT A VALID ACTION", metadata={"m": m})), True),
    ("changes as a string", lambda r, m: _array(_complete(changes=m)), True),
    (
        "a CIDR as ip",
        lambda r, m: _array(_complete(request={"ip": "10.0.0.0/8"}, metadata={"m": m})),
        True,
    ),
    ("unknown field", lambda r, m: _array(_complete(evil=m)), True),
    ("bad severity", lambda r, m: _array(_complete(severity="doom", metadata={"m": m})), True),
    ("bad actor type", lambda r, m: _array(_complete(actor={"id": m, "type": "god"})), True),
    ("tenant past its limit", lambda r, m: _array(_complete(tenant=m + "t" * 2000)), True),
    ("no action", lambda r, m: json.dumps([{"metadata": {"m": m}}]), False),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("as_producer_user", [False, True], ids=["full-rights", "producer-user"])
async def test_a_hostile_producer_costs_no_other_producer_an_event(
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    as_producer_user: bool,
) -> None:
    """Everyone on the server's full rights (FCALL and EVAL), or everyone on the producer user
    (FCALL only: EVAL, XADD and the rest refused; the inbox writable by hand)."""
    rng = random.Random(SEED)
    note = f"(AUDITQ_TEST_SEED={SEED})"
    queue = settings.queue
    await load_functions(redis)
    url = await _url_for(redis, settings, as_producer_user)
    hostile = aioredis.Redis.from_url(url)
    given: list[str] = []
    unanswered: list[int] = []
    attacks: list[tuple[str, str, str]] = []  # (name, marker, task id)
    refused: list[str] = []

    async def send(payload: str | bytes, finalized: bool) -> str:
        args: list[str | bytes] = [payload, "", "finalized"] if finalized else [payload]
        if rng.random() < 0.5:
            try:
                task = await hostile.eval(ENQUEUE_SCRIPT, 1, queue, *args)  # type: ignore[arg-type]
                assert not as_producer_user, f"the producer user ran EVAL {note}"
                return bytes(task).decode()
            except NoPermissionError:
                assert as_producer_user, note
        task = await hostile.fcall(ENQUEUE_FUNCTION, 1, queue, *args)  # type: ignore[arg-type]
        return bytes(task).decode()

    async def produce(client: AuditClient, n: int) -> None:
        for i in range(n):
            event_id = await client.capture(AuditEvent(action="doc.viewed", metadata={"i": i}))
            if event_id is None:  # not accepted in time (a loaded machine): no promise made
                unanswered.append(i)
                continue
            given.append(event_id)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.003)

    async def attack() -> None:
        for n in range(ATTACKS):
            name, make, finalized = rng.choice(ATTACK_KINDS)
            marker = f"HOSTILE-{n}-{uuid.uuid4().hex[:6]}"
            task = await send(make(rng, marker), finalized)
            attacks.append((name, marker, task))
            await _side_attack(send, hostile, rng, queue, given, attacks, refused, note)
            await asyncio.sleep(rng.random() * 0.004)

    clients = [AuditClient.from_url(url, queue=queue) for _ in range(CLIENTS)]
    with caplog.at_level(logging.WARNING, logger="auditq.worker"):
        async with running_worker(settings) as worker:
            try:
                await asyncio.gather(attack(), *(produce(c, EVENTS_PER_CLIENT) for c in clients))
            finally:
                for client in clients:
                    await client.aclose()
                await hostile.aclose()

            async def drained() -> bool:
                queued = await redis.zcard(queue) + await redis.llen(f"auditq:inbox:{queue}")
                return queued == 0 and not any(not t.done() for t in worker.tasks.values())

            await wait_for(drained, within_s=120)
            # The worker that started is the one still running: never stopped nor restarted.
            heartbeat = worker_state(worker)._heartbeat
            assert heartbeat is not None and not heartbeat.done(), note

    assert len(given) > len(unanswered), f"{len(unanswered)} captures unanswered {note}"
    await _check_every_given_id_once(pg, given, attacks, note)
    await _check_every_bad_input_failed(redis, queue, attacks, note)
    # The worker never failed a job on its own nor restarted.
    unexpected = [r.getMessage() for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert not unexpected, f"{unexpected[:3]} {note}"
    await redis.execute_command("ACL", "DELUSER", f"{PRODUCER_USER}-{queue}")  # 0 if none


async def _check_every_given_id_once(
    pg: asyncpg.Connection, given: list[str], attacks: list[tuple[str, str, str]], note: str
) -> None:
    # Every id a client was given is stored exactly once.
    rows = await pg.fetch(
        "SELECT id::text, count(*) AS n FROM audit_log WHERE id = ANY($1::uuid[]) GROUP BY id",
        given,
    )
    counts = {r["id"]: r["n"] for r in rows}
    missing = [i for i in given if i not in counts]
    assert not missing, f"{len(missing)} of {len(given)} accepted events were lost {note}"
    twice = {i: n for i, n in counts.items() if n != 1}
    assert not twice, f"stored more than once: {twice} {note}"
    # Nothing off the wire format was stored, and a twin id is stored once, the first copy.
    bad_actions = await pg.fetch(
        "SELECT action FROM audit_log WHERE action !~ $1 OR jsonb_typeof(changes) = 'string'"
        " OR tenant LIKE 'HOSTILE%' OR actor_type NOT IN ('user','service','system','api_token')",
        ACTION_PATTERN,
    )
    assert not bad_actions, f"stored off the wire format: {bad_actions} {note}"
    for name, marker, _ in attacks:
        if name == "duplicate id in a batch":
            copies = await pg.fetch(
                "SELECT metadata->>'copy' AS copy FROM audit_log WHERE id = $1::uuid", marker
            )
            assert [c["copy"] for c in copies] == ["first"], f"{marker}: {copies} {note}"


async def _check_every_bad_input_failed(
    redis: aioredis.Redis, queue: str, attacks: list[tuple[str, str, str]], note: str
) -> None:
    # Every bad input is a failed task, with its reason and its bytes.
    letters = [
        await dead_letter.get(redis, queue, task_id)
        for task_id in await dead_letter.list_ids(redis, queue)
    ]
    texts = [(_text(letter.payload), letter) for letter in letters if letter is not None]
    for name, marker, task in attacks:
        if name == "duplicate id in a batch" or name == "empty array":
            continue
        found = [letter for text, letter in texts if marker in text]
        assert found, f"{name!r} ({marker}, task {task}) is not a failed task {note}"
        for letter in found:
            assert letter.message and letter.event_count >= 1, f"{name}: {letter} {note}"


async def _side_attack(
    send: Callable[[str | bytes, bool], Awaitable[str]],
    redis: aioredis.Redis,
    rng: random.Random,
    queue: str,
    given: list[str],
    attacks: list[tuple[str, str, str]],
    refused: list[str],
    note: str,
) -> None:
    """Now and then: a forged re-send, twin ids, an oversized payload, a forged live entry."""
    roll = rng.random()
    if roll < 0.15 and given:
        # A forged re-send of an id a client was given, with another ts, flagged.
        stolen = rng.choice(given)
        later = (datetime.now(UTC) - timedelta(seconds=rng.randrange(1, 9999))).isoformat()
        await send(_array(_complete(id=stolen, ts=later)), True)
    elif roll < 0.3:
        # One id twice in one batch, two ts: the first stays.
        twin = str(uuid.uuid4())
        first = _complete(id=twin, metadata={"copy": "first"})
        second = _complete(id=twin, metadata={"copy": "second"}, ts="2020-01-01T00:00:00Z")
        await send(_array(first, second), rng.random() < 0.8)
        attacks.append(("duplicate id in a batch", twin, ""))
    elif roll < 0.38:
        try:
            await send("[" + "1," * (4 * 1024 * 1024 + 10) + "1]", True)
        except ResponseError as exc:
            assert "AUDITQ_MAX_JOB_BYTES" in str(exc), note
            refused.append("oversized")
        else:
            raise AssertionError(f"an oversized payload was taken {note}")
    elif roll < 0.45:
        # A forged live entry: an unbounded range of rows for every live reader.
        forged = (
            b'{"seqs":"{[0,)}","ts_from":"0001-01-01T00:00:00Z","ts_to":"9999-12-31T00:00:00Z"}'
        )
        try:
            await redis.xadd(live_key(queue), {"rows": forged})
        except NoPermissionError:
            refused.append("live entry")
    elif roll < 0.55:
        # Garbage appended by hand to the inbox (the producer user's one writable key), with
        # and without a header that looks like the function's.
        marker = f"HOSTILE-inbox-{uuid.uuid4().hex[:6]}"
        header = json.dumps({"id": "", "given": False, "finalized": True, "ms": -1})
        entry = rng.choice([marker.encode() + rng.randbytes(30), f'{header}\n[{{"m":"{marker}"}}]'])
        try:
            await redis.rpush(f"auditq:inbox:{queue}", entry)
        except NoPermissionError:  # the server's own user writes jobs, not the inbox
            return
        attacks.append(("hand-appended inbox entry", marker, ""))


def _text(payload: Any) -> str:
    """A dead letter's payload as text; bytes that were not UTF-8 are kept base64-encoded."""
    if isinstance(payload, str) and payload.startswith(RAW_BYTES_PREFIX):
        raw = base64.b64decode(payload.removeprefix(RAW_BYTES_PREFIX))
        return raw.decode("utf-8", "replace")
    return json.dumps(payload)


async def _url_for(redis: aioredis.Redis, settings: Settings, as_producer_user: bool) -> str:
    """The server's URL, or that of a producer user of the test's queue made now."""
    url = settings.redis_url
    assert url
    if not as_producer_user:
        return url
    password = uuid.uuid4().hex
    user = f"{PRODUCER_USER}-{settings.queue}"  # its own name: a shared Redis's are left alone
    await ensure_producer_user(redis, settings.queue, password, user=user)
    return with_user(url, user, password)
