"""New rows go only into the transparency log (migration 0007): what the owner changes in
them is still caught, old v1-sealed rows still verify, and a stale seal queue is reported."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.integrity.keys import load_or_create_private_key
from service.ops.verification import run_verification
from service.settings import Settings
from service.store import logcheck
from service.store.leaves import DATESTYLE, row_leaf_data
from service.store.seals import NEW_ROWS, LogConfig, seal_once
from service.store.verify_reads import ROWS_TEXT_TIMES
from tests.support.integrity import run_verify_log, seal_all, store

MIGRATIONS = Path(__file__).parents[2] / "service" / "store" / "migrations"
AS_OWNER_UNCHECKED = "SET session_replication_role = replica"  # a superuser: no trigger fires


def _log(tmp_path: Path) -> LogConfig:
    return LogConfig(state_path=tmp_path / "seal-state", origin="auditq/log-only")


async def _seal_log(pg: asyncpg.Connection, key: Ed25519PrivateKey, log: LogConfig) -> None:
    while await seal_once(pg, key, log) is not None:
        pass


async def _alter(pg: asyncpg.Connection, row_id: object) -> None:
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE audit_log SET tenant = 'evil' WHERE id = $1", row_id)


async def _verify(settings: Settings) -> tuple[dict[str, object], list[str]]:
    lines: list[str] = []
    result = await run_verification(settings, emit=lines.append)
    return result, lines


async def test_a_new_row_goes_only_into_the_log_and_an_owner_change_to_it_is_caught(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    v1_before = await pg.fetchval("SELECT count(*) FROM seal_checkpoint")
    ids = await store(pg, 30)
    # The trigger queued the seqs only: no row was digested for a v1 checkpoint.
    assert await pg.fetchval("SELECT count(*) FROM seal_pending WHERE entries IS NOT NULL") == 0
    await _seal_log(pg, key, _log(tmp_path))
    assert await pg.fetchval("SELECT count(*) FROM seal_checkpoint") == v1_before
    result, lines = await _verify(settings)
    assert result["findings"] == 0, lines
    assert result["awaiting_seal"] == 0, lines

    await _alter(pg, ids[7])
    result, lines = await _verify(settings)
    assert result["findings"] == 1, lines
    assert any(re.fullmatch(rf"row {ids[7]} altered \(leaf \d+\)", line) for line in lines), lines

    # The same through processes of their own (how a large store is verified).
    assert settings.database_url
    report, found = await run_verify_log(
        pg, key, rows_check=logcheck.in_processes(settings.database_url, 2, in_place_below=0)
    )
    assert report.findings == 1 and report.rows >= 30, found
    assert any(line.startswith(f"row {ids[7]} altered (leaf ") for line in found), found


async def test_rows_checked_in_pieces_by_processes_report_what_one_pass_reports(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Batches cut into pieces of 4 rows, checked by whichever process (or connection) is
    free: an altered row late in a batch and a row deleted from another piece are named
    with the same row id and leaf index as the check of whole batches in this process
    names them."""
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 30)
    await _seal_log(pg, key, _log(tmp_path))
    await _alter(pg, ids[17])
    await _alter(pg, ids[29])
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("DELETE FROM audit_log WHERE id = $1", ids[6])
    assert settings.database_url
    found: dict[str, list[str]] = {}
    for how, check in (
        ("in place", None),
        ("pieces", logcheck.in_processes(settings.database_url, 2, in_place_below=0, piece_rows=4)),
        ("connections", logcheck.on_connections(settings.database_url, 2, piece_rows=4)),
    ):
        report, lines = await run_verify_log(pg, key, rows_check=check)
        assert report.findings == 3, lines
        found[how] = lines
    assert found["pieces"] == found["in place"] == found["connections"]
    for row_id in (ids[17], ids[29]):
        assert any(line.startswith(f"row {row_id} altered (leaf ") for line in found["pieces"])
    assert any(
        re.fullmatch(r"row with seq \d+ missing \(leaf \d+\)", line) for line in found["pieces"]
    )


# Times at the edges of their text form: no fraction, trailing zeros, one microsecond, the
# first and last years an item can hold, another zone.
EDGE_TIMES = [
    "0001-01-01 00:00:00+00", "2026-01-02 03:04:05+00", "2026-01-02 03:04:05.1+00",
    "2026-01-02 03:04:05.120+00", "2026-01-02 03:04:05.123456+00", "2026-01-02 03:04:05.000001+00",
    "9999-12-31 23:59:59.999999+00", "2026-06-30 23:59:59.5+02", "1969-12-31 23:59:59.999+00",
]  # fmt: skip


async def test_times_read_as_text_give_the_leaves_the_datetimes_give_whatever_the_datestyle(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """The verifier reads a row's times as text (service/store/leaves.py): on a server
    whose DateStyle and time zone are not ISO and UTC, rows sealed with times at the edges
    of that form verify, and every leaf is the one read with datetimes."""
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, len(EDGE_TIMES))
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        for row_id, at in zip(ids, EDGE_TIMES, strict=True):
            await pg.execute(
                "UPDATE audit_log SET ts = $2::text::timestamptz, "
                "received_at = $2::text::timestamptz WHERE id = $1",
                row_id,
                at,
            )
    await _seal_log(pg, key, _log(tmp_path))  # the sealer reads the times as datetimes
    database = await pg.fetchval("SELECT current_database()")
    await pg.execute(f"ALTER DATABASE \"{database}\" SET DateStyle = 'SQL, DMY'")
    await pg.execute(f"ALTER DATABASE \"{database}\" SET TimeZone = 'America/New_York'")
    assert settings.database_url
    for check in (
        logcheck.in_processes(settings.database_url),  # in this process, one more connection
        logcheck.in_processes(settings.database_url, 2, in_place_below=0, piece_rows=4),
        logcheck.on_connections(settings.database_url, 2, piece_rows=4),  # the C's binary times
    ):
        report, lines = await run_verify_log(pg, key, rows_check=check)
        assert report.findings == 0, lines
    seqs = "{[0,1000000)}"
    await pg.execute(DATESTYLE)
    as_datetimes = [row_leaf_data(r) for r in await pg.fetch(NEW_ROWS, seqs)]
    as_text = [row_leaf_data(r) for r in await pg.fetch(ROWS_TEXT_TIMES, seqs)]
    assert len(as_text) >= len(EDGE_TIMES) and as_text == as_datetimes


def _function(sql: str, name: str) -> str:
    """The CREATE FUNCTION statement of `name` in a migration's text."""
    start = sql.index(f"CREATE OR REPLACE FUNCTION public.{name}(")
    return sql[start : sql.index("$$;", sql.index("$$", start) + 2) + 3]


def _renamed(sql: str) -> str:
    """A migration's function as it runs after migration 0010 renamed it."""
    return sql.replace("public.audit_log_queue_seal()", "public.auditq_queue_seal()")


async def test_rows_sealed_by_v1_before_the_migration_still_verify_after_it(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    # The store before migration 0007: the trigger digests every row for a v1 checkpoint.
    before = (MIGRATIONS / "0002_privilege.sql").read_text()
    # (named as migration 0010 names it, so the table's trigger runs it)
    await pg.execute(_renamed(_function(before, "audit_log_queue_seal")))
    old = await store(pg, 20, prefix="old")
    assert await pg.fetchval("SELECT count(*) FROM seal_pending WHERE entries IS NOT NULL") == 1
    assert await seal_all(pg, key) >= 1  # v1 checkpoints, as that release made them
    await pg.execute(_renamed((MIGRATIONS / "0007_log_only_sealing.sql").read_text()))
    new = await store(pg, 20, prefix="new")
    await _seal_log(pg, key, _log(tmp_path))

    result, lines = await _verify(settings)
    assert result["findings"] == 0, lines
    assert result["rows"] >= 40 and result["awaiting_seal"] == 0, lines

    await _alter(pg, old[3])
    await _alter(pg, new[5])
    result, lines = await _verify(settings)
    assert result["findings"] == 2, lines
    assert any(re.fullmatch(rf"row {old[3]} altered \(checkpoint \d+\)", x) for x in lines), lines
    assert any(re.fullmatch(rf"row {new[5]} altered \(leaf \d+\)", x) for x in lines), lines


async def test_rows_queued_past_the_interval_are_awaiting_and_the_stale_queue_is_a_finding(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    key = load_or_create_private_key(settings.seal_key_path)
    await _seal_log(pg, key, _log(tmp_path))
    await seal_all(pg, key)
    ids = await store(pg, 6)
    result, lines = await _verify(settings)
    assert result["findings"] == 0 and result["awaiting_seal"] == 6, lines
    # A sealer that stopped an hour ago (and rows whose received_at a writer backdated):
    # the rows are still queued, so awaiting their seal, and the queue's age is reported.
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE seal_pending SET queued_at = now() - interval '1 hour'")
        await pg.execute(
            "UPDATE audit_log SET received_at = now() - interval '1 hour' WHERE id = ANY($1)", ids
        )
    # (with the integrity.verified event the first verification stored)
    queued = await pg.fetchval(
        "SELECT sum(upper(r) - lower(r)) FROM seal_pending p, unnest(p.seqs) r WHERE kind = 'row'"
    )
    assert queued == 7
    result, lines = await _verify(settings)
    assert result["awaiting_seal"] == queued, lines
    assert result["findings"] == 1, lines
    assert any(
        line.startswith(f"{queued} rows queued for sealing since")
        and "the sealer is not sealing" in line
        for line in lines
    ), lines


async def test_a_row_slipped_in_past_the_seal_queue_is_named_by_every_way_of_checking(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A row stored with the triggers off (never queued) after the log began: "not in the
    log", whether the rows are checked here, on connections or in processes (the scan for
    such rows runs beside the rows' check there)."""
    key = load_or_create_private_key(settings.seal_key_path)
    await store(pg, 6)
    await _seal_log(pg, key, _log(tmp_path))
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        forged = await pg.fetchval(
            "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
            "SELECT gen_random_uuid(), ts, action, category, severity, outcome, presentation "
            "FROM audit_log LIMIT 1 RETURNING id"
        )
        last = await pg.fetchval(  # the largest seq there is: the last gap has no upper bound
            "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation, "
            "seq) SELECT gen_random_uuid(), ts, action, category, severity, outcome, "
            "presentation, 9223372036854775807 FROM audit_log LIMIT 1 RETURNING id"
        )
    assert settings.database_url
    for check in (
        None,
        logcheck.rows_check(settings.database_url),
        logcheck.on_connections(settings.database_url, 2, piece_rows=2),
        logcheck.in_processes(settings.database_url, 2, in_place_below=0, piece_rows=2),
    ):
        report, lines = await run_verify_log(pg, key, rows_check=check)
        assert lines == [
            f"row {row_id} not in the log (not queued for sealing either)"
            for row_id in (forged, last)
        ], lines
        assert report.findings == 2 and report.rows == 6
