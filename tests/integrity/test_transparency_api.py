"""The log over HTTP and the command line: receipts (409 before the first checkpoint), the
checkpoint as a signed note, consistency proofs, the integrity status, /metrics, and a
sealer that stops and says why."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.cli.main import main
from service.integrity import merkle, note
from service.integrity.keys import load_or_create_private_key
from service.settings import Settings
from service.store import db, tlog
from service.store.seals import LogConfig, seal_once
from tests.integrity import independent_verifier
from tests.support.admin_api import Tokens
from tests.support.integrity import store
from tests.support.polling import wait_for
from workers import sealer


def _log(settings: Settings) -> LogConfig:
    return LogConfig(state_path=settings.seal_state_path, origin=settings.log_origin)


async def test_receipts_checkpoint_and_consistency_over_http(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection, settings: Settings
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 20)
    async with api.get(f"/api/v1/admin/audit-logs/{ids[3]}/proof", headers=tokens.reader) as r:
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "awaiting_checkpoint"
    async with api.get("/api/v1/admin/integrity/checkpoint", headers=tokens.reader) as r:
        assert r.status == 404
    await seal_once(pg, key, _log(settings))
    first = await tlog.Tree(pg).size()
    await store(pg, 15, prefix="later")
    await seal_once(pg, key, _log(settings))
    async with api.get(f"/api/v1/admin/audit-logs/{ids[3]}/proof") as r:
        assert r.status == 401
    async with api.get(f"/api/v1/admin/audit-logs/{ids[3]}/proof", headers=tokens.ingest) as r:
        assert r.status == 403
    async with api.get(f"/api/v1/admin/audit-logs/{ids[3]}/proof", headers=tokens.reader) as r:
        assert r.status == 200
        receipt = await r.json()
    async with api.get(f"/api/v1/admin/audit-logs/{ids[3]}", headers=tokens.reader) as r:
        assert receipt["item"] == await r.json()  # ITEM exactly as the item route returns it
    assert independent_verifier.check(receipt, key.public_key())
    async with api.get("/api/v1/admin/integrity/checkpoint", headers=tokens.reader) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    checkpoint = note.parse(text)
    database = await pg.fetchval("SELECT current_database()")
    assert checkpoint.origin == f"auditq/{database}" and checkpoint.size == receipt["tree_size"]
    note.verify(checkpoint, checkpoint.origin, key.public_key())
    old = note.parse(await pg.fetchval("SELECT note FROM tlog_checkpoint WHERE size = $1", first))
    url = f"/api/v1/admin/integrity/consistency?from={first}&to={checkpoint.size}"
    async with api.get(url, headers=tokens.reader) as r:
        assert r.status == 200
        body = await r.json()
    assert (body["from"], body["to"]) == (first, checkpoint.size)
    proof = [base64.b64decode(h) for h in body["proof"]]
    merkle.verify_consistency(first, checkpoint.size, old.root, checkpoint.root, proof)
    async with api.get("/api/v1/admin/integrity/consistency?from=3", headers=tokens.reader) as r:
        assert r.status == 200  # `to` defaults to the latest checkpoint's size
        assert (await r.json())["to"] == checkpoint.size
    for bad in (f"from=5&to={checkpoint.size + 1}", "from=x&to=3", "from=4&to=3"):
        async with api.get(
            f"/api/v1/admin/integrity/consistency?{bad}", headers=tokens.reader
        ) as r:
            assert r.status == 400, bad
            assert (await r.json())["error"]["code"] == "invalid_parameter"
    async with api.get("/api/v1/admin/audit-logs/not-a-uuid/proof", headers=tokens.reader) as r:
        assert r.status == 400
    missing = "0190a0b1-0000-7000-8000-000000000000"
    async with api.get(f"/api/v1/admin/audit-logs/{missing}/proof", headers=tokens.reader) as r:
        assert r.status == 404
    async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as r:
        status = await r.json()
    assert status["tree_size"] == checkpoint.size and status["checkpoint"] == text
    assert status["sealing_stopped"] is None and status["witnesses"] == []


@pytest.mark.usefixtures("cli_env")
async def test_auditq_proof_prints_a_receipt_verify_receipt_accepts(
    pg: asyncpg.Connection, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 5)
    assert await asyncio.to_thread(main, ["proof", str(ids[1])]) == 1
    assert "awaits its first checkpoint" in capsys.readouterr().err
    await seal_once(pg, key, _log(settings))
    assert await asyncio.to_thread(main, ["proof", str(ids[1])]) == 0
    path = tmp_path / "receipt.json"
    path.write_text(capsys.readouterr().out)
    assert json.loads(path.read_text())["item"]["id"] == str(ids[1])
    assert await asyncio.to_thread(main, ["verify-receipt", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"valid: event {ids[1]}")
    assert await asyncio.to_thread(main, ["integrity", "public-key", "--vkey"]) == 0
    name, vkey_key, kind = note.parse_vkey(capsys.readouterr().out)
    checkpoint = note.parse(json.loads(path.read_text())["checkpoint"])
    assert (name, kind) == (checkpoint.origin, note.ED25519_TYPE)
    note.verify(checkpoint, name, vkey_key)
    assert await asyncio.to_thread(main, ["integrity", "head"]) == 0
    head = capsys.readouterr().out
    assert note.parse(head).size == json.loads(path.read_text())["tree_size"]
    (tmp_path / "head.txt").write_text(head)
    assert await asyncio.to_thread(main, ["verify", "--head", str(tmp_path / "head.txt")]) == 0
    assert "0 findings" in capsys.readouterr().out.splitlines()[-1]
    (tmp_path / "bad-head.txt").write_text("not a checkpoint")
    assert await asyncio.to_thread(main, ["verify", "--head", str(tmp_path / "bad-head.txt")]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["proof", "nope"])
    assert exited.value.code == 2


async def test_a_rolled_back_log_stops_sealing_and_says_so_everywhere(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection, settings: Settings
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    await store(pg, 10)
    assert settings.database_url
    pool = await db.create_pool(settings.database_url, size=2)
    task = asyncio.create_task(sealer.run(pool, key, interval_s=0.2, log=_log(settings)))
    try:
        await wait_for(lambda: _has_checkpoint(pg))
        async with pg.transaction():  # a DBA restores the log as it was before that seal
            await pg.execute("SET LOCAL session_replication_role = replica")
            await pg.execute("DELETE FROM tlog_batch")
            await pg.execute("DELETE FROM tlog_checkpoint")
        await store(pg, 5, prefix="after")

        async def stopped() -> bool:
            async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as r:
                return (await r.json())["sealing_stopped"] is not None

        await wait_for(stopped)
        async with api.get("/api/v1/admin/integrity", headers=tokens.reader) as r:
            reason = (await r.json())["sealing_stopped"]
        assert "a cut tail or a restored older backup" in reason
        async with api.get("/metrics") as r:
            assert "auditq_sealing_stopped 1.0" in await r.text()
        assert await pg.fetchval("SELECT count(*) FROM tlog_checkpoint") == 0  # never signed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


async def _has_checkpoint(pg: asyncpg.Connection) -> bool:
    return bool(await pg.fetchval("SELECT count(*) FROM tlog_checkpoint"))
