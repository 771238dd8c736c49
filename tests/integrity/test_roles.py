"""The runtime roles cannot rewrite the record: every bypass is refused, on a real server."""

from __future__ import annotations

import asyncpg
import pytest

from service.store.partitions import LIST_PARTITIONS
from service.store.rollup import fold_all
from tests.integrity.conftest import store

# (what is tried, statements), each run in its own transaction as the runtime role.
BYPASSES = [
    ("update a row", ["UPDATE audit_log SET action = 'x.y'"]),
    ("delete a row", ["DELETE FROM audit_log"]),
    ("truncate", ["TRUNCATE audit_log"]),
    ("the old maintenance escape", [
        "SET LOCAL auditq.maintenance = 'on'", "DELETE FROM audit_log"]),
    ("the erasure flag", [
        "SET LOCAL auditq.erasing = '1'", "UPDATE audit_log SET action = 'x.y'"]),
    ("replica mode", ["SET session_replication_role = replica"]),
    ("disable the triggers", ["ALTER TABLE audit_log DISABLE TRIGGER ALL"]),
    ("drop the trigger", ["DROP TRIGGER audit_log_append_only ON audit_log"]),
    ("drop the trigger function", ["DROP FUNCTION audit_log_append_only() CASCADE"]),
    ("replace the trigger function", [
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"]),
    ("truncate a partition", ["TRUNCATE {partition}"]),
    ("delete from a partition", ["DELETE FROM {partition}"]),
    ("update a partition", ["UPDATE {partition} SET action = 'x.y'"]),
    ("drop a partition", ["DROP TABLE {partition}"]),
    ("detach a partition", ["ALTER TABLE audit_log DETACH PARTITION {partition}"]),
    ("alter a partition", ["ALTER TABLE {partition} ADD COLUMN x int"]),
    ("alter the table", ["ALTER TABLE audit_log ALTER COLUMN action DROP NOT NULL"]),
    ("rename the table", ["ALTER TABLE audit_log RENAME TO audit_log_old"]),
    ("choose a row's seq", [
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation, seq) "
        "VALUES (gen_random_uuid(), now(), 'a.b', 'a', 'info', 'success', '{}', 1)"]),
    ("delete a checkpoint", ["DELETE FROM seal_checkpoint"]),
    ("update a checkpoint", ["UPDATE seal_checkpoint SET signature = ''"]),
    ("truncate checkpoints", ["TRUNCATE seal_checkpoint"]),
    ("forge an admin action", [
        "INSERT INTO store_action (action, detail) VALUES ('partition.dropped', '{}')"]),
    ("delete an admin action", ["DELETE FROM store_action"]),
    ("retention of a young partition", ["SELECT auditq_drop_partition('{partition}', 1)"]),
    ("retention of another table", ["SELECT auditq_drop_partition('api_token', 1)"]),
    ("record an action directly", ["SELECT auditq_record_action('x', '{}')"]),
    # GRANT without the right only warns: what counts is that the UPDATE still fails.
    ("grant itself more", [
        "GRANT UPDATE ON audit_log TO CURRENT_USER", "UPDATE audit_log SET action = 'x.y'"]),
    ("become the owner", ["SET ROLE postgres"]),
    ("create a trigger", [
        "CREATE TRIGGER t BEFORE INSERT ON audit_log FOR EACH ROW "
        "EXECUTE FUNCTION audit_log_append_only()"]),
    ("run a program", ["COPY (SELECT 1) TO PROGRAM 'true'"]),
    ("create in public", ["CREATE TABLE public.seal_pending_shadow (x int)"]),
    ("forge statistics", [
        "INSERT INTO rollup_day (day, action, severity, outcome, n) "
        "VALUES (current_date, 'a.b', 'info', 'success', 1000)"]),
    ("inflate statistics", ["UPDATE rollup_day_actor SET n = n + 1"]),
    ("hide rows from the statistics", ["DELETE FROM rollup_pending"]),
    ("count rows out of the rollup", [
        "SELECT auditq_rollup_rows('{[1,1000000)}'::int8multirange, -1)"]),
]  # fmt: skip
REFUSED = (
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidParameterValueError,
    asyncpg.CantChangeRuntimeParamError,
    asyncpg.ObjectNotInPrerequisiteStateError,
    asyncpg.UndefinedTableError,
)


@pytest.mark.parametrize("role", ["auditq_worker", "auditq_api"])
async def test_every_bypass_is_refused(
    pg: asyncpg.Connection, role_urls: dict[str, str], role: str
) -> None:
    await store(pg, 3)
    partition = await pg.fetchval(
        "SELECT tableoid::regclass::text FROM audit_log ORDER BY seq LIMIT 1"
    )
    before = await pg.fetchval("SELECT count(*) FROM audit_log")
    conn = await asyncpg.connect(role_urls[role])
    succeeded = []
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", role)
        for what, statements in BYPASSES:
            try:
                async with conn.transaction():
                    for statement in statements:
                        await conn.execute(statement.replace("{partition}", partition))
            except REFUSED:
                continue
            succeeded.append(what)
    finally:
        await conn.close()
    assert succeeded == []
    assert await pg.fetchval("SELECT count(*) FROM audit_log") == before
    assert partition in {r["relname"] for r in await pg.fetch(LIST_PARTITIONS)}


async def test_the_worker_stores_and_the_api_reads(
    pg: asyncpg.Connection, worker_conn: asyncpg.Connection, api_conn: asyncpg.Connection
) -> None:
    await store(worker_conn, 4)
    assert await api_conn.fetchval("SELECT count(*) FROM audit_log") == 4
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await store(api_conn, 1)
    assert await worker_conn.fetchval("SELECT count(*) FROM seal_pending") >= 1


async def test_the_worker_folds_the_rollup_and_the_api_reads_it(
    worker_conn: asyncpg.Connection, api_conn: asyncpg.Connection
) -> None:
    await store(worker_conn, 5)
    assert await fold_all(worker_conn) == 1
    assert await api_conn.fetchval("SELECT sum(n) FROM rollup_day") == 5
    assert await api_conn.fetchval("SELECT count(*) FROM rollup_pending") == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await fold_all(api_conn)
