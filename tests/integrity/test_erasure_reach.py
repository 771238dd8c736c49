"""Erasure reaches every copy of the person and nothing that is not theirs (contract §9).

Attacks of the erasure through the one definer function, as the API's role, on a real
PostgreSQL: the subject inside URLs, paths, host names and emails of other rows' texts and
in other actors' request paths (the full-text parser keeps those as single tokens); and a
numeric id and a shared client address, whose unrelated rows must stay byte-identical."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from service.events import Actor, AuditEvent, Change, Entity, Presentation, RequestInfo, finalize
from service.store.subjects import erase_step
from tests.support.integrity import run_verify, seal_all
from workers.writer import write_events

PSEUDONYM = "anon_" + "c" * 32
TEXTS = """SELECT coalesce(entity_name, '') || ' ' || coalesce(path, '') || ' ' ||
    coalesce(metadata::text, '') || ' ' || coalesce(changes::text, '') || ' ' ||
    presentation::text FROM audit_log WHERE action <> 'subject.anonymised'"""


def _event(actor: str, **kw: Any) -> AuditEvent:
    name = kw.pop("name", None)
    email = kw.pop("email", None)
    ip = kw.pop("ip", None)
    path = kw.pop("path", None)
    return finalize(
        AuditEvent(
            action=kw.pop("action", "doc.viewed"),
            actor=Actor(id=actor, type="user", name=name, email=email),
            request=RequestInfo(ip=ip, path=path) if ip or path else None,
            **kw,
        )
    )[0]


async def _erase(api_conn: asyncpg.Connection, subject: str) -> None:
    await api_conn.fetchval("SELECT auditq_register_erasure($1)", PSEUDONYM)
    done = False
    while not done:
        _, done, _ = await erase_step(
            api_conn, subject_id=subject, pseudonym=PSEUDONYM, reason=None, dead_letters=0,
            by={"actor": {"id": "t", "type": "api_token"}, "source": "tests"}, limit=3,
        )  # fmt: skip


async def test_the_subject_is_found_inside_urls_paths_hosts_and_emails(
    pg: asyncpg.Connection,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
    seal_key: object,
) -> None:
    alice = {"name": "Alice Liddell", "email": "alice@example.com", "ip": "198.51.100.23"}
    events = [
        _event("alice", **alice),
        _event("bob", entity=Entity(type="page", id="p1",
                                    name="https://app.example.com/users/alice/profile")),
        _event("bob", metadata={"home": "/home/alice/x", "vhost": "alice.example.com"}),
        _event("bob", metadata={"note": "mail from alice@example.com (re: ALICE@EXAMPLE.COM)"}),
        _event("bob", path="/customers/alice@example.com/orders/9"),
        _event("bob", path="/users/alice/settings"),
        _event("bob", changes=[Change(field="owner", old="https://x.test/~alice", new="bob")]),
        _event("bob", presentation=Presentation(
            code="doc.shared", params={"link": "https://alice.example.com/a?by=alice"})),
        _event("bob", metadata={"who": "Alice Liddell's report", "nested": [{"u": "x/alice/y"}]}),
        _event("carol", metadata={"kept": "alice2 malice alicex /home/alicia"}),
    ]  # fmt: skip
    await write_events(worker_conn, events, received_via="redis:test", keyed=True)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    carol_before = await pg.fetch("SELECT t::text FROM audit_log t WHERE actor_id = 'carol'")

    await _erase(api_conn, "alice")

    texts = "\n".join(r[0] for r in await pg.fetch(TEXTS))
    for value in ("alice@", "alice/", "/alice", "alice.example", "Alice Liddell"):
        assert value.lower() not in texts.lower(), (value, texts)
    assert "/customers/[erased]/orders/9" in texts
    assert f"/users/{PSEUDONYM}/settings" in texts
    assert f"https://app.example.com/users/{PSEUDONYM}/profile" in texts
    # Longer words are not the subject: carol's row is byte-identical.
    assert carol_before == await pg.fetch(
        "SELECT t::text FROM audit_log t WHERE actor_id = 'carol'"
    )
    # Nor can the full-text search find them.
    for word in ("alice", "liddell"):
        hits = await pg.fetchval(
            "SELECT count(*) FROM audit_log WHERE search @@ plainto_tsquery('simple', $1) "
            "AND actor_id <> 'carol'", word)  # fmt: skip
        assert hits == 0, word
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0, lines


async def test_a_short_id_and_a_shared_address_leave_others_byte_identical(
    pg: asyncpg.Connection,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
    seal_key: object,
) -> None:
    nat = "203.0.113.1"
    events = [
        _event("42", name="Zed Quarrington", ip=nat, metadata={"cart": "42 items", "via": nat}),
        _event("42", ip="127.0.0.1", entity=Entity(type="order", id="42")),
        _event("u-7", ip=nat, metadata={"count": "42", "from": nat, "text": "order 42 of 42"}),
        _event("u-8", ip="127.0.0.1", path="/orders/42", entity=Entity(type="order", id="42",
                                                                       name="Order 42")),
        _event("u-9", ip="127.0.0.1", metadata={"answer": 42, "s": "42", "ip": "127.0.0.1"}),
        _event("u-9", metadata={"re": "Zed Quarrington asked"}),
        # Fields that name a person hold the id whole: cleared even there.
        _event("u-10", metadata={"user_id": "42", "count": "42", "owner": {"id": 42, "n": 42}}),
    ]  # fmt: skip
    await write_events(worker_conn, events, received_via="redis:test", keyed=True)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    others = "SELECT t::text FROM audit_log t WHERE actor_id IN ('u-7', 'u-8') ORDER BY seq"
    before = await pg.fetch(others)
    u9_before = await pg.fetch(
        "SELECT t::text FROM audit_log t WHERE actor_id = 'u-9' ORDER BY seq"
    )

    await _erase(api_conn, "42")

    assert before == await pg.fetch(others)  # byte-identical: '42' and the NAT address kept
    u9 = await pg.fetch("SELECT t::text FROM audit_log t WHERE actor_id = 'u-9' ORDER BY seq")
    assert u9[0] == u9_before[0]  # 127.0.0.1 and 42 are not the subject's there
    assert "Zed Quarrington" not in u9[1][0]  # the name is specific: cleared everywhere
    person = await pg.fetchval("SELECT metadata FROM audit_log WHERE actor_id = 'u-10'")
    assert person == {"user_id": PSEUDONYM, "count": "42", "owner": {"id": PSEUDONYM, "n": 42}}
    own = await pg.fetch("SELECT * FROM audit_log WHERE actor_id = $1 ORDER BY seq", PSEUDONYM)
    assert len(own) == 2
    assert all(r["ip"] is None and r["actor_name"] is None for r in own)
    assert "42" not in own[0]["metadata"]["cart"] and nat not in own[0]["metadata"]["via"]
    assert own[1]["entity_id"] == "42"  # an order, not the subject
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE actor_id = '42'") == 0
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0, lines


async def test_the_runtime_roles_cannot_plant_or_read_what_erasure_keeps(
    worker_conn: asyncpg.Connection, api_conn: asyncpg.Connection
) -> None:
    digest = b"\x01" * 16
    register = (
        "SELECT auditq_register_mentions($1, ARRAY[$2::bytea], ARRAY[$2::bytea], '{1}', '{f}', "
        "'{f}')"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker_conn.fetchval(register, PSEUDONYM, digest)
    for conn in (worker_conn, api_conn):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO erased_mention VALUES ($1, $2, $2, 1, false)", PSEUDONYM, digest
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM erasure_value")
    # The API only for an erasure it registered, and within bounds.
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        await api_conn.fetchval(register, PSEUDONYM, digest)
    await api_conn.fetchval("SELECT auditq_register_erasure($1)", PSEUDONYM)
    assert await api_conn.fetchval(register, PSEUDONYM, digest) == 1
    many = [bytes([i % 256, i // 256]) * 8 for i in range(1002)]
    with pytest.raises(asyncpg.InvalidParameterValueError):
        await api_conn.fetchval(
            "SELECT auditq_register_mentions($1, $2, $2, array_fill(1, ARRAY[1002]), "
            "array_fill(false, ARRAY[1002]), array_fill(false, ARRAY[1002]))",
            PSEUDONYM,
            many,
        )


async def test_the_documented_rule_of_common_values(pg: asyncpg.Connection) -> None:
    common = ["42", "al", "u-1", "---", "4417210", "Admin", "ROOT", "system", "noreply"]
    specific = ["u-42", "alice", "12345678", "alice@example.com", "Zed Quarrington", "u-zq-4417"]
    rule = "SELECT auditq_erase_value_is_common($1)"
    assert [v for v in common if not await pg.fetchval(rule, v)] == []
    assert [v for v in specific if await pg.fetchval(rule, v)] == []
