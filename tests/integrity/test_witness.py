"""A witness (C2SP tlog-witness) over real HTTP: it cosigns a growing log, refuses a head
that does not extend what it cosigned (409 / 422), a key it does not trust (403); the
sealer sends it each checkpoint and stores its cosignatures."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.api.witness import Witness, witness_app
from service.integrity import merkle, note, receipt
from service.integrity.keys import load_or_create_private_key
from service.settings import Settings
from service.store import db, tlog
from service.store.receipts import receipt_of
from service.store.seals import LogConfig
from tests.integrity import independent_verifier
from tests.support.admin_api import Tokens
from tests.support.integrity import store
from tests.support.polling import wait_for
from workers import sealer, witnesses

ORIGIN = "auditq/witness-test"


def _checkpoint(key: Ed25519PrivateKey, hashes: list[bytes]) -> str:
    body = note.checkpoint_body(ORIGIN, len(hashes), merkle.root_of(hashes))
    return note.sign(body, ORIGIN, key)


def _body(old: int, proof: list[bytes], signed: str) -> str:
    return (
        f"old {old}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n" + signed
    )


async def test_a_witness_cosigns_growth_and_refuses_a_fork(tmp_path: Path) -> None:
    log_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    witness = Witness(
        name="witness.test/w1", key=witness_key, logs={ORIGIN: log_key.public_key()},
        state_path=tmp_path / "state.json",
    )  # fmt: skip
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(40)]
    node = merkle.memory_nodes(leaves)
    async with TestClient(TestServer(witness_app(witness))) as client:

        async def add(old: int, proof: list[bytes], signed: str) -> tuple[int, str]:
            async with client.post("/add-checkpoint", data=_body(old, proof, signed)) as r:
                return r.status, await r.text()

        first = _checkpoint(log_key, leaves[:10])
        status, line = await add(0, [], first)
        assert status == 200
        ts = note.verify_cosignature(
            note.parse(first + line), "witness.test/w1", witness_key.public_key()
        )
        assert ts > 1_700_000_000
        # Growth from 10 to 30 with a valid proof.
        grown = _checkpoint(log_key, leaves[:30])
        assert (await add(10, merkle.consistency_proof(node, 10, 30), grown))[0] == 200
        # A stale old size: 409 with the size it holds, as text/x.tlog.size.
        async with client.post("/add-checkpoint", data=_body(10, [], grown)) as r:
            assert r.status == 409 and r.content_type == "text/x.tlog.size"
            assert await r.text() == "30\n"
        # A fork: the same log key signed another history of 35 leaves.
        fork = [merkle.leaf_hash(b"fork %d" % i) for i in range(35)]
        fork_node = merkle.memory_nodes(fork)
        status, _ = await add(
            30, merkle.consistency_proof(fork_node, 30, 35), _checkpoint(log_key, fork)
        )
        assert status == 422
        # The same size with another root: 409.
        assert (await add(30, [], _checkpoint(log_key, fork[:30])))[0] == 409
        # Signed by a key the witness does not trust, or for a log it does not follow.
        assert (await add(30, [], _checkpoint(Ed25519PrivateKey.generate(), leaves[:30])))[0] == 403
        other = note.sign(note.checkpoint_body("other/log", 1, leaves[0]), "other/log", log_key)
        assert (await add(0, [], other))[0] == 404
        assert (await add(0, [], "garbage"))[0] == 400
        # Its memory survives a restart: the state file holds size 30.
    async with TestClient(TestServer(witness_app(witness))) as client:
        async with client.post("/add-checkpoint", data=_body(0, [], first)) as r:
            assert r.status == 409 and await r.text() == "30\n"


async def test_the_sealer_sends_checkpoints_to_witnesses_and_keeps_their_cosignatures(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection, settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    from service.integrity.keys import load_or_create_private_key

    key = load_or_create_private_key(settings.seal_key_path)
    witness_key = Ed25519PrivateKey.generate()
    witness = Witness(
        name="witness.test/w1", key=witness_key, logs={ORIGIN: key.public_key()},
        state_path=tmp_path / "witness-state.json",
    )  # fmt: skip
    server = TestServer(witness_app(witness), host="127.0.0.1")
    await server.start_server()
    down = "http://127.0.0.1:9/"  # nothing listens there
    urls = (str(server.make_url("/")), down)
    log = LogConfig(state_path=tmp_path / "seal-state", origin=ORIGIN)
    assert settings.database_url
    pool = await db.create_pool(settings.database_url, size=2)
    task = asyncio.create_task(sealer.run(pool, key, interval_s=0.2, log=log, witness_urls=urls))
    try:
        ids = await store(pg, 10)

        async def cosigned(size: int) -> bool:
            return bool(await pg.fetchval(
                "SELECT count(*) FROM tlog_cosignature WHERE size >= $1", size
            ))  # fmt: skip

        await wait_for(lambda: cosigned(10))
        await store(pg, 10, prefix="more")
        await wait_for(lambda: cosigned(20))
        async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as r:
            status = await r.json()
        by_url = {w["url"]: w for w in status["witnesses"]}
        assert by_url[urls[0]]["last_cosigned_size"] >= 20 and by_url[urls[0]]["last_error"] is None
        assert (
            by_url[down]["last_cosigned_size"] is None
            and "unreachable" in by_url[down]["last_error"]
        )
        head = await tlog.last_checkpoint(pg)
        assert head is not None
        async with api.get("/api/v1/admin/integrity/checkpoint", headers=tokens.reader) as r:
            text = await r.text()
        note.verify_cosignature(note.parse(text), "witness.test/w1", witness_key.public_key())
        r = await receipt_of(pg, ids[2])
        assert r is not None
        receipt.verify(
            r,
            log_key=key.public_key(),
            witness_keys=[("witness.test/w1", witness_key.public_key())],
        )
        assert independent_verifier.check(
            r, key.public_key(), {"witness.test/w1": witness_key.public_key()}
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        await server.close()


async def test_a_witness_that_hangs_delays_no_seal(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A witness that takes every request and never answers (until the test ends), and a
    # timeout far longer than the test waits: a sealer that waited for it would not seal.
    monkeypatch.setattr(witnesses, "TIMEOUT_S", 600.0)
    asked = asyncio.Event()
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        asked.set()
        await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/add-checkpoint", hang)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    key = load_or_create_private_key(settings.seal_key_path)
    log = LogConfig(state_path=tmp_path / "seal-state", origin=ORIGIN)
    assert settings.database_url
    pool = await db.create_pool(settings.database_url, size=3)
    urls = (str(server.make_url("/")),)
    task = asyncio.create_task(sealer.run(pool, key, interval_s=0.2, log=log, witness_urls=urls))
    try:
        await store(pg, 5)
        await asyncio.wait_for(asked.wait(), timeout=30)  # the first checkpoint was sent
        first = await tlog.last_checkpoint(pg)
        assert first is not None
        size = first["size"]
        await store(pg, 5, prefix="later")

        async def sealed_past() -> bool:
            head = await tlog.last_checkpoint(pg)
            return head is not None and head["size"] > size

        # Sealed while the witness still holds the first request open.
        await wait_for(sealed_past)
        assert not release.is_set()
    finally:
        release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        await server.close()
