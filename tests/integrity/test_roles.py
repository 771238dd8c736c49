"""The runtime roles cannot rewrite the record: every bypass is refused, on a real server."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from service.store.partitions import LIST_PARTITIONS, partition_name
from service.store.policy import NotOwner, Policy
from service.store.policy import set_retention as set_policy
from service.store.policy import show as show_policy
from service.store.rollup import fold_all
from tests.integrity.conftest import run_verify, seal_all, store
from tests.stores import set_retention
from workers.maintenance import drop_expired_partitions

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
    # Retention whose period the caller chooses (the old signatures) or drops directly.
    ("retention of a young partition", ["SELECT auditq_drop_partition('{partition}', 1)"]),
    ("retention of another table", ["SELECT auditq_drop_partition('api_token', 1)"]),
    ("retention of a day", ["SELECT auditq_delete_expired_default_rows(1)"]),
    ("drop a partition by the definer", ["SELECT auditq_drop_partition('{partition}')"]),
    ("delete default rows by the definer", ["SELECT auditq_delete_expired_default_rows()"]),
    ("write the policy", ["UPDATE store_policy SET retention_days = 1"]),
    ("add a policy", ["INSERT INTO store_policy (singleton, retention_days) VALUES (false, 1)"]),
    ("remove the policy", ["DELETE FROM store_policy"]),
    ("stamp the policy", ["SELECT auditq_policy_record()"]),
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
    asyncpg.UndefinedFunctionError,
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


# --- Retention: the period is the store's policy, not the caller's ------------------------

INSERT_AT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation)
VALUES (gen_random_uuid(), $1, 'a.b', 'a', 'info', 'success', '{}')
"""


async def test_the_worker_cannot_remove_what_the_policy_keeps(
    pg: asyncpg.Connection, worker_conn: asyncpg.Connection, seal_key: object
) -> None:
    # A row of four months ago in the default partition, rows of a month of its own.
    now = datetime.now(UTC)
    old = now - timedelta(days=120)
    await worker_conn.execute(INSERT_AT, old)
    month = date(now.year - 2, now.month, 1)
    await worker_conn.fetchval("SELECT auditq_ensure_partition($1)", month)
    await worker_conn.execute(INSERT_AT, datetime(month.year, month.month, 3, tzinfo=UTC))
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    before = await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'a.b'")
    # The attack of the issue: the worker asks for a retention of one day.
    for attack in (
        "SELECT auditq_delete_expired_default_rows(1)",
        "SELECT auditq_delete_expired_default_rows()",
        f"SELECT auditq_drop_partition('{partition_name(month)}')",
        f"SELECT auditq_drop_partition('{partition_name(month)}', 1)",
    ):
        with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedFunctionError)):
            await worker_conn.fetchval(attack)
    # What the worker may do, apply the policy, removes nothing while the policy keeps all...
    assert await drop_expired_partitions(worker_conn) == []
    # ...or while it keeps more than their age, and the owner's own call is refused too.
    await set_retention(pg, 3 * 365)
    assert await drop_expired_partitions(worker_conn) == []
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="retention policy"):
        await pg.fetchval("SELECT auditq_drop_partition($1)", partition_name(month))
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'a.b'") == before
    # The owner shortens the policy: the next maintenance removes both, each a store action.
    await set_retention(pg, 90)
    assert await drop_expired_partitions(worker_conn) == [partition_name(month)]
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'a.b'") == 0
    actions = [
        (r["action"], r["detail"].get("retention_days"))
        for r in await pg.fetch("SELECT action, detail FROM store_action ORDER BY id")
        if r["action"] != "partition.created"
    ]
    assert actions == [
        ("policy.set", 3 * 365),
        ("policy.set", 90),
        ("partition.dropped", 90),
        ("retention.rows_deleted", 90),
    ]
    # The removals' events are stored by the store itself, whoever asked.
    events = await pg.fetch(
        "SELECT action, received_via FROM audit_log WHERE action LIKE 'audit.%' ORDER BY seq"
    )
    assert [(e["action"], e["received_via"]) for e in events] == [
        ("audit.partition_dropped", "worker"),
        ("audit.rows_expired", "worker"),
    ]
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0 and report.removed_by_retention == 2, lines


async def test_the_policy_is_the_owners_and_each_change_is_stamped(
    pg: asyncpg.Connection, api_conn: asyncpg.Connection, worker_conn: asyncpg.Connection
) -> None:
    assert await show_policy(api_conn) == Policy(retention_days=None, set_at=None, set_by=None)
    for conn in (api_conn, worker_conn):
        with pytest.raises(NotOwner):
            await set_policy(conn, 1)
    # The owner (here the superuser that migrated) cannot backdate or sign for someone else.
    await pg.execute(
        "UPDATE store_policy SET retention_days = 30, set_at = '2001-01-01', set_by = 'nobody'"
    )
    policy = await show_policy(api_conn)
    assert policy.retention_days == 30 and policy.set_by == await pg.fetchval("SELECT session_user")
    assert policy.set_at is not None and policy.set_at.year == datetime.now(UTC).year
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.execute("DELETE FROM store_policy")
