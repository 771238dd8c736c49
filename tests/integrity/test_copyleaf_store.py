"""The C path of the verifier's row check on a real PostgreSQL: random rows stored, read back
by the binary COPY, their leaves the reference's; rows changed in the database are findings
whether the C or the Python path wrote their leaves."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.events import PG_INFINITIES
from service.integrity.canonical import ROW_COLUMNS
from service.integrity.keys import load_or_create_private_key
from service.integrity.leaf import _i_json, as_json
from service.settings import Settings
from service.store import copyleaf, logcheck, tlog
from service.store.items import SELECT_ONE, item
from service.store.leaves import LEAF_ROWS, SEARCH_PATH, row_leaf_data
from service.store.seals import LogConfig, seal_once
from tests.support.integrity import run_verify_log, store

# The checks of the compiled path itself; the others hold for the Python path too.
needs_c = pytest.mark.skipif(
    not copyleaf.available(), reason="service.store._copyleaf was not compiled"
)

CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(CHARS, max_size=12)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e9, max_value=1e9)
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
TIME = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)  # fmt: skip
NULLABLE_TEXT = (
    "actor_id", "actor_type", "actor_name", "actor_email", "entity_type", "entity_id",
    "entity_name", "tenant", "request_id", "user_agent", "method", "path", "source",
    "received_via",
)  # fmt: skip
ROW = st.fixed_dictionaries(
    {
        "ts": TIME,
        "received_at": TIME,
        **{c: TEXT for c in ("action", "category", "severity", "outcome")},
        **{c: st.none() | TEXT for c in NULLABLE_TEXT},
        "ip": st.none() | st.ip_addresses().map(str),
        "status": st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "duration_ms": st.none()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.floats(min_value=0, max_value=1e6),
        "changes": st.none() | JSON,
        "metadata": st.none() | JSON,
        "presentation": JSON,
    }
)
INSERT = """
INSERT INTO audit_log (id, ts, received_at, action, category, severity, outcome, actor_id,
    actor_type, actor_name, actor_email, entity_type, entity_id, entity_name, tenant,
    request_id, ip, user_agent, method, path, status, duration_ms, changes, metadata,
    presentation, source, received_via)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::text::inet,
    $18, $19, $20, $21, $22, $23::text::jsonb, $24::text::jsonb, $25::text::jsonb, $26, $27)
RETURNING seq, host(ip)
"""
_INSERTED = (
    "id", "ts", "received_at", "action", "category", "severity", "outcome", "actor_id",
    "actor_type", "actor_name", "actor_email", "entity_type", "entity_id", "entity_name",
    "tenant", "request_id", "ip", "user_agent", "method", "path", "status", "duration_ms",
    "changes", "metadata", "presentation", "source", "received_via",
)  # fmt: skip
JSON_COLUMNS = ("changes", "metadata", "presentation")
TIMES = ("ts", "received_at")


def _random_rows(count: int) -> list[dict[str, Any]]:
    """`count` rows drawn by hypothesis (collected here; the test stores them all at once)."""
    rows: list[dict[str, Any]] = []

    @settings(
        max_examples=count, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(ROW)
    def collect(row: dict[str, Any]) -> None:
        rows.append(row)

    collect()
    return rows


def _as_stored(row: dict[str, Any]) -> dict[str, Any]:
    """A drawn row's values as PostgreSQL keeps them, read back as the API reads them:
    asyncpg writes the first and the last instant (datetime.min and datetime.max in UTC) as
    -infinity and infinity, and reads those back as times without a zone, which the API
    writes without a "Z" (no ingested event holds one: service/events.py refuses them)."""
    return {
        **row,
        **{c: row[c].replace(tzinfo=None) for c in TIMES if row[c] in PG_INFINITIES},
    }


def _reference_data(values: dict[str, Any]) -> bytes:
    return rfc8785.dumps({"kind": "row", "item": _i_json(as_json(item(values)))})


def _reference_hash(values: dict[str, Any]) -> bytes:
    return hashlib.sha256(b"\x00" + _reference_data(values)).digest()


async def _explain(pg: asyncpg.Connection, drawn: dict[int, dict[str, Any]]) -> str:
    """What a failure needs to be reproduced (hypothesis keeps no example here): for each
    row of these seqs, the row drawn, and the leaf data of the reference (from the values
    drawn), of the item the API returns (read back from PostgreSQL) and of the Python path."""
    lines = []
    for seq, row in drawn.items():
        stored = await pg.fetchrow(SELECT_ONE, row["id"])
        assert stored is not None
        again = await pg.fetch(LEAF_ROWS, f"{{[{seq},{seq + 1})}}")
        lines += [
            f"seq {seq}: drawn {row!r}",
            f"  reference {_reference_data({**_as_stored(row), 'ip': stored['ip']})!r}",
            f"  api item  {_reference_data(dict(stored))!r}",
            f"  python    {row_leaf_data(again[0])!r}",
        ]
    return "\n".join(lines)


async def _store_random_rows(
    pg: asyncpg.Connection, count: int
) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """`count` random rows stored: the rows drawn (with their ids), in the order stored, and
    each one's reference leaf hash by seq."""
    return await _store_rows(pg, _random_rows(count))


async def _store_rows(
    pg: asyncpg.Connection, drawn: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """These rows stored, each with an id of its own (hypothesis may draw one row twice)."""
    rows = [{**row, "id": uuid.uuid4()} for row in drawn]
    expected: dict[int, bytes] = {}
    for row in rows:
        args = [
            json.dumps(row[c])  # presentation is NOT NULL: JSON's null, then
            if c in JSON_COLUMNS and (row[c] is not None or c == "presentation")
            else row[c]
            for c in _INSERTED
        ]
        seq, ip = await pg.fetchrow(INSERT, *args)
        # The address as PostgreSQL writes it, the times as it keeps them.
        expected[seq] = _reference_hash({**_as_stored(row), "ip": ip})
    return rows, expected


async def _sealed_leaves(pg: asyncpg.Connection, seqs: list[int]) -> list[bytes]:
    """The leaf hashes the log holds for these rows' seqs, in their order."""
    tree = tlog.Tree(pg)
    leaves = []
    for seq in seqs:
        index = await tlog.row_leaf_index(pg, seq)
        assert index is not None, f"row of seq {seq} not in the log"
        leaves += await tree.leaves(index, index + 1)
    return leaves


async def _hash_span(
    database_url: str, first: int, last: int
) -> tuple[list[int], bytes, list[int]]:
    """copyleaf.hash_rows of the seqs [first, last], on a connection as the verifier's."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(SEARCH_PATH)
        return await copyleaf.hash_rows(conn, f"{{[{first},{last + 1})}}")
    finally:
        await conn.close()


@needs_c
async def test_random_rows_read_by_the_copy_hash_as_the_reference_path(
    pg: asyncpg.Connection, database_url: str
) -> None:
    """Any unicode, escapes, floats, integers past 2**53, nulls, nested JSON, through
    PostgreSQL's own jsonb text: every row the C writes has the reference's leaf hash."""
    rows, expected = await _store_random_rows(pg, 400)
    seqs = sorted(expected)
    found, hashes, unsure = await _hash_span(database_url, seqs[0], seqs[-1])
    assert found == seqs
    sure = [i for i in range(len(seqs)) if i not in set(unsure)]
    assert len(sure) > len(seqs) // 4  # the C writes most rows itself
    for i in sure:
        assert hashes[i * 32 : (i + 1) * 32] == expected[seqs[i]], rows[i]


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
async def test_the_sealer_logs_the_reference_leaf_of_every_row(
    settings: Settings,
    pg: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compiled: bool,
) -> None:
    """Random rows, those the C writes and those it leaves to Python among them, sealed by
    the sealer: the log holds for each the leaf an outsider computes from its item (RFC
    8785), whether the compiled module is there or not."""
    if compiled and not copyleaf.available():
        pytest.skip("service.store._copyleaf was not compiled")
    if not compiled:
        monkeypatch.setattr(copyleaf, "_copyleaf", None)
    rows, expected = await _store_random_rows(pg, 300)
    seqs = sorted(expected)
    if compiled:  # both paths are taken: the C's rows and the ones it is unsure of
        _, _, unsure = await _hash_span(database_url, seqs[0], seqs[-1])
        assert 0 < len(unsure) < len(seqs)
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    sealed = await _sealed_leaves(pg, seqs)
    differing = {s: rows[i] for i, s in enumerate(seqs) if sealed[i] != expected[s]}
    assert not differing, await _explain(pg, differing)


BASE_ROW: dict[str, Any] = {
    "ts": datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
    "received_at": datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    "action": "config.updated", "category": "config", "severity": "info", "outcome": "success",
    **dict.fromkeys(NULLABLE_TEXT), "ip": None, "status": None, "duration_ms": None,
    "changes": None, "metadata": None, "presentation": {"code": "audit.config.updated"},
}  # fmt: skip
# The shapes where what PostgreSQL keeps may differ from the value drawn, or RFC 8785 from a
# plain JSON writer: numbers jsonb writes without an exponent or turns into integers, integers
# past 2**53, keys sorted as UTF-16 (outside the BMP apart), normalization forms kept apart,
# controls, times just inside the first and the last instant, -0.0 as a column and in JSON.
EDGE_VALUES: list[Any] = [
    1e21, 1e-7, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, 1e16, 1e15, 0.1 + 0.2,
    -0.0, 123.0, 2**53 - 1, 2**53, 2**53 + 1, 2**64, -(2**70), 10**15 - 1, 9007199254740993,
    {"\U0001d11e": 1, "\uff61": 2, "\ue000": 3, "a": 4, "": 5, "\u00e9": 6, "e\u0301": 7},
    ["\x7f\u2028\u2029\ufeff\ufffe\uffff", "\x01\x08\t\n\x0b\x0c\r\x1f\"\\/"],
    {"\u212b": "\u00c5", "\u00c5": "A\u030a"}, [[[[{"x": [1.5, -2.5e-5, 1e300]}]]]],
]  # fmt: skip
EDGE_ROWS = [
    {**BASE_ROW, "metadata": {"v": value}, "changes": [value], "presentation": value}
    for value in EDGE_VALUES
] + [
    {**BASE_ROW, "ts": datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "duration_ms": -0.0},
    {**BASE_ROW, "received_at": datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)},
    {**BASE_ROW, "duration_ms": 1e21, "status": -(2**31), "ip": "::ffff:1.2.3.4"},
    {**BASE_ROW, "duration_ms": 5e-324, "actor_id": "\U0001d11e", "entity_name": "\x7f"},
]


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
async def test_the_sealer_logs_the_reference_leaf_of_edge_rows(
    settings: Settings,
    pg: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compiled: bool,
) -> None:
    """The shapes hypothesis draws rarely, sealed: each leaf is the reference of the values
    stored, which is also the reference of the item the API returns for the row."""
    if compiled and not copyleaf.available():
        pytest.skip("service.store._copyleaf was not compiled")
    if not compiled:
        monkeypatch.setattr(copyleaf, "_copyleaf", None)
    rows, expected = await _store_rows(pg, EDGE_ROWS)
    seqs = sorted(expected)
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    sealed = await _sealed_leaves(pg, seqs)
    differing = {s: rows[i] for i, s in enumerate(seqs) if sealed[i] != expected[s]}
    assert not differing, await _explain(pg, differing)
    for seq, row in zip(seqs, rows, strict=True):  # the reference is the API's item's
        stored = await pg.fetchrow(SELECT_ONE, row["id"])
        assert stored is not None and _reference_hash(dict(stored)) == expected[seq], seq


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
async def test_the_first_and_last_instants_are_logged_as_postgresql_keeps_them(
    settings: Settings,
    pg: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compiled: bool,
) -> None:
    """A time drawn at the first or the last instant (the shape the random rows' test once
    failed on, its example not kept): asyncpg stores it as -infinity or infinity, which the
    C leaves to the Python path and the API returns as a time without a zone. The log holds
    the leaf of that item; the reference of the values drawn (a "Z" more) was wrong."""
    if compiled and not copyleaf.available():
        pytest.skip("service.store._copyleaf was not compiled")
    if not compiled:
        monkeypatch.setattr(copyleaf, "_copyleaf", None)
    first, last = sorted(PG_INFINITIES)
    rows, expected = await _store_rows(
        pg, [{**BASE_ROW, "ts": first}, {**BASE_ROW, "received_at": last}]
    )
    seqs = sorted(expected)
    kept = await pg.fetch(
        "SELECT ts = '-infinity', received_at = 'infinity' FROM audit_log ORDER BY seq"
    )
    assert [tuple(r) for r in kept] == [(True, False), (False, True)]
    if compiled:
        assert (await _hash_span(database_url, seqs[0], seqs[-1]))[2] == [0, 1]
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    sealed = await _sealed_leaves(pg, seqs)
    assert sealed == [expected[s] for s in seqs]
    for seq, row in zip(seqs, rows, strict=True):  # the reference is the API's item's
        stored = await pg.fetchrow(SELECT_ONE, row["id"])
        assert stored is not None and _reference_hash(dict(stored)) == expected[seq], seq
    assert not {_reference_hash(row) for row in rows} & set(sealed)  # the old reference's


async def test_rows_an_owner_gave_one_seq_are_each_logged_with_their_reference_leaf(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """A row and its twin under the same seq (only the owner can store one), both rows the
    C leaves to Python (a key outside the BMP): re-read rows cannot be told apart by seq,
    so the Python path writes the batch; both rows' reference leaves are in the log."""
    _, expected = await _store_random_rows(pg, 3)
    first = min(expected)
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        original = await pg.fetchrow(
            """UPDATE audit_log SET metadata = '{"𝄞": 0}' WHERE seq = $1 RETURNING *, host(ip)""",
            first,
        )
        columns = ", ".join(ROW_COLUMNS)
        values = columns.replace(" id,", " gen_random_uuid(),").replace(
            "metadata,", """'{"𝄞": 1}'::jsonb,"""
        )
        twin = await pg.fetchval(
            f"INSERT INTO audit_log ({columns}) SELECT {values} FROM audit_log "
            "WHERE seq = $1 RETURNING id",
            first,
        )
    copy = await pg.fetchrow("SELECT *, host(ip) FROM audit_log WHERE id = $1", twin)
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    tree = tlog.Tree(pg)
    leaves = await tree.leaves(0, await tree.size())
    for row in (original, copy):
        assert _reference_hash({**dict(row), "ip": row["host"]}) in leaves
    assert all(expected[seq] in leaves for seq in expected if seq != first)


AS_OWNER_UNCHECKED = "SET session_replication_role = replica"  # a superuser: no trigger fires
CHANGES = [
    "tenant = 'evil'",
    "entity_name = entity_name || 'é'",
    "ts = ts + interval '1 microsecond'",
    "received_at = received_at - interval '1 microsecond'",
    "duration_ms = 12.500000000000002",
    "ip = '203.0.113.8'",
    "metadata = jsonb_set(metadata, '{seats}', '3.5')",
    'metadata = metadata || \'{"note": "a\\\\nb"}\'',
    "id = gen_random_uuid()",
    "status = 201",
    "actor_id = 'u-9', actor_type = 'user'",
]


async def test_a_row_changed_in_the_database_is_a_finding_whichever_path_writes_its_leaf(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Rows the C writes and rows it leaves to Python (a key outside the BMP, an integer
    past 2**53), changed by the owner in any column: each is named altered, no other is."""
    key = load_or_create_private_key(settings.seal_key_path)
    count = 2 * len(CHANGES) + 6
    ids = await store(pg, count)
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE audit_log SET duration_ms = 12.5, status = 200, ip = '::1'")
        hard = ids[len(CHANGES) :]  # their leaves come from the Python path
        await pg.execute(
            "UPDATE audit_log SET metadata = metadata || "
            """'{"𝄞": 1, "big": 90071992547409930}' WHERE id = ANY($1::uuid[])""",
            hard,
        )
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    assert settings.database_url
    check = logcheck.on_connections(settings.database_url, 2, piece_rows=7)
    report, lines = await run_verify_log(pg, key, rows_check=check)
    assert report.findings == 0 and report.rows == count, lines
    altered = [*ids[: len(CHANGES)], *hard[: len(CHANGES)]]
    seqs = [await pg.fetchval("SELECT seq FROM audit_log WHERE id = $1", i) for i in altered]
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        for change, row_id in zip(CHANGES * 2, altered, strict=True):
            await pg.execute(f"UPDATE audit_log SET {change} WHERE id = $1", row_id)
    report, lines = await run_verify_log(pg, key, rows_check=check)
    assert report.findings == len(altered), lines
    named = {m.group(1) for line in lines if (m := re.match(r"row (\S+) altered \(leaf", line))}
    # Each is named by the id it holds now (a changed id by its new one).
    now = await pg.fetch("SELECT id FROM audit_log WHERE seq = ANY($1::bigint[])", seqs)
    assert named == {str(r["id"]) for r in now}


HOSTILE_HOST = """
CREATE FUNCTION public.host(inet) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN $1 = '203.0.113.8' THEN '203.0.113.7' ELSE pg_catalog.host($1) END
$$
"""


async def test_a_function_shadowing_a_built_in_one_does_not_hide_a_change(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """The database's search_path puts public before pg_catalog and public.host(inet) hides a
    changed address: the checking connections search pg_catalog alone, so the change shows."""
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 5)
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE audit_log SET ip = '203.0.113.7'")
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    database = await pg.fetchval("SELECT current_database()")
    await pg.execute(HOSTILE_HOST)
    await pg.execute(f'ALTER DATABASE "{database}" SET search_path = public, pg_catalog')
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE audit_log SET ip = '203.0.113.8' WHERE id = $1", ids[2])
    assert settings.database_url
    for check in (
        logcheck.rows_check(settings.database_url),
        logcheck.in_processes(settings.database_url, 2, in_place_below=0, piece_rows=2),
    ):
        _, lines = await run_verify_log(pg, key, rows_check=check)
        assert lines == [f"row {ids[2]} altered (leaf 2)"], lines


ADDRESSES = [
    "0.0.0.0", "255.255.255.255", "10.0.0.0/8", "203.0.113.7", "::", "::1", "1::", "::2:0",
    "::ffff:1.2.3.4", "::1.2.3.4", "::ffff:0:1.2.3.4", "::0:ffff:1.2.3.4", "::ffff",
    "0:0:0:0:0:1:0:0", "1:0:0:1:0:0:0:1", "1:0:0:0:1:0:0:1", "1:0:1:0:1:0:1:0",
    "2001:db8::", "2001:db8::/32", "fe80::1:0:0:0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2001:DB8:0:0:0:0:0:A", "0:0:0:0:0:0:0:1/64", "1:2:3:4:5:6:7:8", "a:0b:00c:000d::",
]  # fmt: skip


@needs_c
async def test_addresses_are_written_as_postgresql_host_writes_them(
    pg: asyncpg.Connection, database_url: str
) -> None:
    """The C writes an inet as host() does (the sealed leaf's text): zero runs, ties, IPv4
    compatible and mapped forms, netmasks (left out), both families' extremes."""
    ids = await store(pg, len(ADDRESSES))
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        for row_id, address in zip(ids, ADDRESSES, strict=True):
            await pg.execute(
                "UPDATE audit_log SET ip = $2::text::inet WHERE id = $1", row_id, address
            )
    rows = await pg.fetch(
        "SELECT *, host(ip) AS host FROM audit_log WHERE id = ANY($1) ORDER BY seq", ids
    )
    seqs, hashes, unsure = await _hash_span(database_url, rows[0]["seq"], rows[-1]["seq"])
    assert seqs == [r["seq"] for r in rows] and unsure == []
    for i, r in enumerate(rows):
        values = {**dict(r), "ip": r["host"]}
        assert hashes[i * 32 : (i + 1) * 32] == _reference_hash(values), r["host"]


async def test_a_column_whose_type_was_changed_is_not_read_as_its_old_type(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """The owner turns `tenant` into bytea, bytes unchanged: the API no longer returns the
    item that was sealed, so the row is a finding (read as its old type's binary form, the
    same bytes would have given the old leaf)."""
    key = load_or_create_private_key(settings.seal_key_path)
    ids = await store(pg, 4)
    async with pg.transaction():
        await pg.execute(AS_OWNER_UNCHECKED)
        await pg.execute("UPDATE audit_log SET tenant = 'acme' WHERE id = $1", ids[1])
    while await seal_once(pg, key, LogConfig(tmp_path / "state", "auditq/c")) is not None:
        pass
    await pg.execute(
        "ALTER TABLE audit_log ALTER COLUMN tenant TYPE bytea USING convert_to(tenant, 'UTF8')"
    )
    assert settings.database_url
    _, lines = await run_verify_log(pg, key, rows_check=logcheck.rows_check(settings.database_url))
    assert lines == [f"row {ids[1]} altered (leaf 1)"], lines
