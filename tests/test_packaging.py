"""What a normal (non-editable) install ships."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_schema_and_the_lua_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("auditq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        schema = archive.read("service/store/schema.sql").decode()
    assert "service/enqueue.lua" in names
    assert "service/redaction_rules.json" in names  # the redaction rule data (docs/redaction.md)
    assert schema == (ROOT / "schema.sql").read_text()
    # The migrations too: an installed auditq upgrades an older store.
    migrations = ROOT / "service" / "store" / "migrations"
    shipped = {n for n in names if n.startswith("service/store/migrations/")}
    assert shipped == {f"service/store/migrations/{p.name}" for p in migrations.glob("*.sql")}
