"""Attacks on the transparency log, on real servers: a row changed in place, a row changed
and re-queued by the owner, a forged checkpoint inserted by the worker's role, a cut tail
checked against a head kept elsewhere; erasure and retention keep receipts valid."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.events import Actor, AuditEvent, finalize
from service.integrity import note, receipt
from service.store.receipts import receipt_of
from service.store.seals import LogConfig, seal_once
from service.store.subjects import erase_step
from tests.integrity import independent_verifier
from tests.support.integrity import run_verify_log
from workers.writer import write_events


async def _store(pg: asyncpg.Connection, count: int, actors: int = 10) -> list[uuid.UUID]:
    events = [
        finalize(
            AuditEvent(
                action="auth.login",
                actor=Actor(id=f"user-{i % actors}", type="user", name=f"Name {i % actors}"),
                metadata={"n": i, "ratio": i / 7, "note": "Zoë ✓"},
                source="tests",
            )
        )[0]
        for i in range(count)
    ]
    await write_events(pg, events, received_via="redis:test", keyed=True)
    return [uuid.UUID(str(e.id)) for e in events]


async def _erase(pg: asyncpg.Connection, subject: str, pseudonym: str) -> int:
    """Erase a subject through the store's function, step by step; the rows it changed."""
    await pg.fetchval("SELECT auditq_register_erasure($1)", pseudonym)
    changed, done = 0, False
    while not done:
        step, done, _ = await erase_step(
            pg, subject_id=subject, pseudonym=pseudonym, reason="asked", dead_letters=0,
            by={"actor": {"id": "t", "type": "api_token"}, "source": "tests"}, limit=1000,
            entity_types=["user"],
        )  # fmt: skip
        changed += step
    return changed


async def _seal(pg: asyncpg.Connection, key: Ed25519PrivateKey, log: LogConfig) -> None:
    while await seal_once(pg, key, log) is not None:
        pass


PSEUDO = "anon_" + "ab" * 16


def _both(r: dict, key: Ed25519PrivateKey) -> tuple[bool, bool]:
    try:
        receipt.verify(r, log_key=key.public_key())
        ours = True
    except receipt.ReceiptError:
        ours = False
    return ours, independent_verifier.check(r, key.public_key())


@pytest.fixture
def log(tmp_path: Path) -> LogConfig:
    return LogConfig(state_path=tmp_path / "seal-state", origin="auditq/attacks")


async def test_a_row_altered_in_place_or_re_queued_by_the_owner_is_named(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, log: LogConfig
) -> None:
    ids = await _store(pg, 40)
    await _seal(pg, seal_key, log)
    report, lines = await run_verify_log(pg, seal_key)
    assert report.findings == 0 and report.rows == 40, lines
    # The owner changes a row, and queues it for sealing again so the sealer logs it anew.
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        await pg.execute("UPDATE audit_log SET action = 'auth.logout' WHERE id = $1", ids[5])
        seq = await pg.fetchval("SELECT seq FROM audit_log WHERE id = $1", ids[5])
        await pg.execute(
            "INSERT INTO seal_pending (kind, seqs) "
            "VALUES ('row', int8multirange(int8range($1, $1, '[]')))",
            seq,
        )
    await _seal(pg, seal_key, log)  # it signs the new leaf: the old one still names the row
    report, lines = await run_verify_log(pg, seal_key)
    assert any(line.startswith(f"row {ids[5]} altered (leaf ") for line in lines), lines
    assert report.findings == 1


async def test_a_checkpoint_forged_by_the_worker_role_is_a_finding(
    pg: asyncpg.Connection,
    seal_key: Ed25519PrivateKey,
    log: LogConfig,
    worker_conn: asyncpg.Connection,
) -> None:
    await _store(pg, 12)
    await _seal(pg, seal_key, log)
    size = await pg.fetchval("SELECT max(size) FROM tlog_checkpoint")
    thief = Ed25519PrivateKey.generate()  # the worker's password, not the seal key
    body = note.checkpoint_body("auditq/attacks", size + 5, bytes(32))
    await worker_conn.execute(
        "INSERT INTO tlog_checkpoint (size, note) VALUES ($1, $2)",
        size + 5,
        note.sign(body, "auditq/attacks", thief),
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker_conn.execute("DELETE FROM tlog_checkpoint")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker_conn.execute("UPDATE tlog_batch SET hashes = hashes")
    _, lines = await run_verify_log(pg, seal_key)
    assert lines == [
        f"checkpoint of size {size + 5} altered or signed with another key: "
        "the checkpoint has no signature of auditq/attacks with this key"
    ]


async def test_verify_head_names_a_cut_tail_and_a_store_that_does_not_extend_it(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, log: LogConfig
) -> None:
    await _store(pg, 20)
    await _seal(pg, seal_key, log)
    await _store(pg, 20)
    await _seal(pg, seal_key, log)
    head = note.parse(log.state_path.read_text())  # kept outside the database
    assert (await run_verify_log(pg, seal_key, head))[0].findings == 0
    async with pg.transaction():  # the tail cut, with its checkpoints
        await pg.execute("SET LOCAL session_replication_role = replica")
        last = await pg.fetchval("SELECT max(first) FROM tlog_batch")
        await pg.execute("DELETE FROM tlog_batch WHERE first = $1", last)
        await pg.execute("DELETE FROM tlog_checkpoint WHERE size > $1", last)
        await pg.execute(
            "DELETE FROM audit_log WHERE seq > "
            "(SELECT max(upper(r)) - 1 FROM tlog_batch b, unnest(b.row_seqs) r)"
        )
    _, lines = await run_verify_log(pg, seal_key, head)
    assert lines == [
        f"the log does not extend the head given (auditq/attacks, size {head.size}): it has "
        f"{last} leaves (a cut tail or a restored older backup)"
    ]
    assert (await run_verify_log(pg, seal_key))[0].findings == 0  # without the head, nothing to see


async def test_receipts_of_erased_and_retention_removed_rows_stay_valid(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, log: LogConfig
) -> None:
    ids = await _store(pg, 200, actors=20)
    await _seal(pg, seal_key, log)
    before = {i: await receipt_of(pg, i) for i in random.Random(3).sample(ids, 60)}
    changed = await _erase(pg, "user-3", PSEUDO)
    assert changed >= 10
    await _seal(pg, seal_key, log)
    report, lines = await run_verify_log(pg, seal_key)
    assert report.findings == 0 and report.erased == 10, lines
    erased = [
        r["id"] for r in await pg.fetch("SELECT id FROM audit_log WHERE actor_id = $1", PSEUDO)
    ]
    assert len(erased) == 10
    for event_id in erased:
        r = await receipt_of(pg, event_id)
        assert r is not None and r["erasures"] and r["item"]["actor"]["id"] == PSEUDO
        assert _both(r, seal_key) == (True, True)
        r["item"]["actor"]["name"] = "Name 3"
        assert _both(r, seal_key) == (False, False)
    # Receipts issued before (of rows since erased or not) still verify: the tree only grew.
    for r in before.values():
        assert _both(r, seal_key) == (True, True)
    # Retention: rows removed leave their leaves; old receipts stay valid, verify passes.
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        removed = await pg.fetch(
            "DELETE FROM audit_log WHERE seq IN "
            "(SELECT seq FROM audit_log ORDER BY seq LIMIT 30) RETURNING seq"
        )
        seqs = ",".join(f"[{r['seq']},{r['seq'] + 1})" for r in removed)
        await pg.execute(
            "SELECT auditq_record_action('retention.rows_deleted', '{\"rows\": 30}', "
            "$1::text::int8multirange)",
            "{" + seqs + "}",
        )
    await _seal(pg, seal_key, log)
    report, lines = await run_verify_log(pg, seal_key)
    assert report.findings == 0 and report.removed_by_retention == 30, lines
    for r in before.values():
        assert _both(r, seal_key) == (True, True)


async def test_both_verifiers_agree_on_receipts_of_1000_stored_events(
    pg: asyncpg.Connection, seal_key: Ed25519PrivateKey, log: LogConfig
) -> None:
    rng = random.Random(1000)
    texts = ["Zoë", "日本語", "emoji 🎉", 'quote " \\', "tab\t", "\u2028", ""]
    ids: list[uuid.UUID] = []
    for part in range(4):
        events = [
            finalize(
                AuditEvent(
                    action=rng.choice(["auth.login", "config.updated", "user.deleted"]),
                    actor=Actor(id=f"user-{rng.randrange(30)}", type="user", name="N"),
                    metadata={
                        "f": rng.random() * 10 ** rng.randint(-8, 22),
                        "i": rng.randint(-(2**60), 2**60),
                        "t": rng.choice(texts),
                        "l": [rng.random(), None, True],
                    },
                    source="tests",
                )
            )[0]
            for _ in range(250)
        ]
        await write_events(pg, events, received_via=f"redis:{part}", keyed=True)
        ids += [uuid.UUID(str(e.id)) for e in events]
        await _seal(pg, seal_key, log)
    issued = {i: await receipt_of(pg, i) for i in ids}
    for subject in ("user-4", "user-7"):
        await _erase(pg, subject, "anon_" + subject[-1] * 32)
    await _seal(pg, seal_key, log)
    async with pg.transaction():
        await pg.execute("SET LOCAL session_replication_role = replica")
        removed = await pg.fetch(
            "DELETE FROM audit_log WHERE seq IN "
            "(SELECT seq FROM audit_log ORDER BY seq LIMIT 50) RETURNING seq, id"
        )
        seqs = ",".join(f"[{r['seq']},{r['seq'] + 1})" for r in removed)
        await pg.execute(
            "SELECT auditq_record_action('retention.rows_deleted', '{\"rows\": 50}', "
            "$1::text::int8multirange)",
            "{" + seqs + "}",
        )
    await _seal(pg, seal_key, log)
    gone = {r["id"] for r in removed}
    receipts = []
    for event_id in ids:
        r = issued[event_id] if event_id in gone else await receipt_of(pg, event_id)
        assert r is not None
        receipts.append(r)
    assert sum(bool(r.get("erasures")) for r in receipts) >= 30
    for n, r in enumerate(receipts):
        assert _both(r, seal_key) == (True, True), r["item"]["id"]
        if n % 10:
            continue
        tampered = [
            {**r, "item": {**r["item"], "action": "auth.logout"}},
            {**r, "item": {**r["item"], "metadata": {**r["item"]["metadata"], "t": "x"}}},
            {**r, "leaf_index": r["leaf_index"] + 1},
            {**r, "inclusion_proof": r["inclusion_proof"][::-1]},
            {**r, "checkpoint": r["checkpoint"].replace("\n", "\n1", 1)},
        ]
        for bad in tampered:
            assert _both(bad, seal_key) == (False, False), (n, bad["item"]["id"])
    report, lines = await run_verify_log(pg, seal_key)
    assert report.findings == 0 and report.removed_by_retention == 50, lines
