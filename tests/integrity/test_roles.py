"""The runtime roles cannot rewrite the record: every bypass is refused, on a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.events import Actor, AuditEvent, Entity, finalize
from service.integrity.keys import load_or_create_private_key
from service.store import db
from service.store.partitions import LIST_PARTITIONS, partition_name
from service.store.policy import NotOwner, Policy
from service.store.policy import set_retention as set_policy
from service.store.policy import show as show_policy
from service.store.roles import check_runtime_role
from service.store.rollup import fold_all
from service.store.subjects import erase_step
from tests.support.integrity import run_verify, seal_all, store, url_as
from tests.support.stores import set_retention
from workers.maintenance import drop_expired_partitions
from workers.writer import write_events

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
    ("drop the trigger function", ["DROP FUNCTION auditq_audit_log_append_only() CASCADE"]),
    ("replace the trigger function", [
        "CREATE OR REPLACE FUNCTION auditq_audit_log_append_only() RETURNS trigger "
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
        "EXECUTE FUNCTION auditq_audit_log_append_only()"]),
    ("run a program", ["COPY (SELECT 1) TO PROGRAM 'true'"]),
    ("create in public", ["CREATE TABLE public.seal_pending_shadow (x int)"]),
    ("forge statistics", [
        "INSERT INTO rollup_day (day, action, severity, outcome, n) "
        "VALUES (current_date, 'a.b', 'info', 'success', 1000)"]),
    ("inflate statistics", ["UPDATE rollup_day_actor SET n = n + 1"]),
    ("hide rows from the statistics", ["DELETE FROM rollup_pending"]),
    ("count rows out of the rollup", [
        "SELECT auditq_rollup_rows('{[1,1000000)}'::int8multirange, -1)"]),
    # Tokens and verification results only through the functions that record what they did.
    ("mint a token", [
        "INSERT INTO api_token (name, role, token_hash) VALUES ('x', 'admin', '\\x00')"]),
    ("un-revoke a token", ["UPDATE api_token SET revoked_at = NULL"]),
    ("delete a token", ["DELETE FROM api_token"]),
    ("forge a verification", [
        "INSERT INTO integrity_verification (result) VALUES ('{\"intact\": true}')"]),
    ("alter a verification", ["UPDATE integrity_verification SET result = '{}'"]),
    ("store an api row unrecorded", [
        "SELECT auditq_store_event('{\"action\": \"a.b\"}', 'api')"]),
    ("store an admin action's row unrecorded", [
        "SELECT auditq_admin_event('token.revoked', '{}', 'api_token', 'x', '{}')"]),
    # Erasure with arguments of the caller's choosing: any actor, any words.
    ("anonymise by forged arguments", [
        "SELECT * FROM auditq_anonymise_rows('e-1', 'anon_' || repeat('0', 32), '{project}', "
        "'{plan,pro}', true, 0, 1000)"]),
    ("mark a subject erased", [
        "INSERT INTO erased_subject (pseudonym, state) "
        "VALUES ('anon_' || repeat('1', 32), 'done')"]),
    ("change an erasure's state", ["UPDATE erased_subject SET state = 'done'"]),
    ("read the subject's values", ["SELECT * FROM erasure_value"]),
]  # fmt: skip
# Rights one runtime role has and the other must not.
ONLY_FOR = {
    "auditq_worker": [
        ("read the API's secrets", ["SELECT secret FROM api_secret"]),
        ("record an admin action", ["SELECT auditq_record_admin_event('{\"action\": \"a.b\"}')"]),
        ("erase a subject", ["SELECT * FROM auditq_register_erasure('anon_' || repeat('2', 32))"]),
        ("mint a token by the function", [
            "SELECT auditq_create_token('x', 'admin', '\\x00', '{}')"]),
        ("record a verification", [
            "SELECT auditq_record_verification(now(), '{\"intact\": true}', '{}')"]),
    ],
    "auditq_api": [
        ("store rows", [
            "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
            "VALUES (gen_random_uuid(), now(), 'a.b', 'a', 'info', 'success', '{}')"]),
        ("apply retention", ["SELECT * FROM auditq_apply_retention(200)"]),
        ("make a partition", ["SELECT auditq_ensure_partition('2031-01-01')"]),
    ],
}  # fmt: skip
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
        for what, statements in BYPASSES + ONLY_FOR[role]:
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
    # The worker reads the one secret it needs, through its view.
    assert await worker_conn.fetchval("SELECT secret FROM provenance_key") == await pg.fetchval(
        "SELECT secret FROM api_secret WHERE name = 'provenance'"
    )
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


# --- Erasure: the caller names a subject; the store decides what changes ------------------

SUBJECT_EVENTS = [
    # (actor id, actor name, entity type, entity id, metadata)
    ("alice", "Alice Liddell", None, None, {"note": "ordinary"}),
    ("alice", "Alice Liddell", "user", "alice", {"note": "self"}),
    ("bob", "Bob Builder", "user", "alice", {"note": "bob looked at the user"}),
    ("bob", "Bob Builder", "project", "alice", {"note": "a project of that id"}),
    ("carol", "Carol", None, None, {"note": "mentions Alice Liddell and the word secretword"}),
    ("bob", "Bob Builder", None, None, {"note": "secretword stays; so does plan pro"}),
]


async def _subject_rows(conn: asyncpg.Connection) -> None:
    events = [
        finalize(
            AuditEvent(
                action="doc.viewed",
                actor=Actor(id=actor, type="user", name=name),
                entity=Entity(type=etype, id=eid) if etype and eid else None,
                metadata=metadata,
            )
        )[0]
        for actor, name, etype, eid, metadata in SUBJECT_EVENTS
    ]
    await write_events(conn, events, received_via="redis:test", keyed=True)


async def _erase(
    api_conn: asyncpg.Connection, subject: str, pseudonym: str
) -> list[tuple[int, bool, int | None]]:
    await api_conn.fetchval("SELECT auditq_register_erasure($1)", pseudonym)
    steps = []
    done = False
    while not done:
        step = await erase_step(
            api_conn,
            subject_id=subject,
            pseudonym=pseudonym,
            reason="asked by Alice Liddell",
            dead_letters=0,
            by={"actor": {"id": "t", "type": "api_token"}, "source": "tests"},
            limit=2,
            entity_types=["user", "project"],  # wider than the store's: narrowed to it
        )
        steps.append(step)
        done = step[1]
    return steps


async def test_erasure_changes_the_named_subject_and_nothing_else(
    pg: asyncpg.Connection,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
    seal_key: object,
) -> None:
    await _subject_rows(worker_conn)
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    others = "SELECT t::text FROM audit_log t WHERE actor_id <> 'alice' AND NOT {} ORDER BY seq"
    untouched = await pg.fetch(
        others.format(
            "(entity_type = 'user' AND entity_id = 'alice') AND NOT search @@ "
            "phraseto_tsquery('simple', 'Alice Liddell')"
        )
    )
    # Not registered: nothing runs.
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        await erase_step(api_conn, subject_id="alice", pseudonym="anon_" + "a" * 32,
                         reason=None, dead_letters=0, by={}, limit=10)  # fmt: skip
    # The caller cannot pass values or a pattern, and its types only narrow the owner's.
    await pg.execute("UPDATE store_policy SET subject_entity_types = '{user}'")
    pseudonym = "anon_" + "b" * 32
    await _erase(api_conn, "alice", pseudonym)
    rows = {r["note"]: r for r in await pg.fetch(
        "SELECT metadata->>'note' AS note, actor_id, actor_name, entity_type, entity_id, "
        "metadata::text AS m FROM audit_log WHERE action = 'doc.viewed'")}  # fmt: skip
    assert rows["ordinary"]["actor_id"] == pseudonym and rows["ordinary"]["actor_name"] is None
    assert rows["self"]["entity_id"] == pseudonym
    assert rows["bob looked at the user"]["actor_id"] == "bob"  # the viewer keeps his name
    assert rows["bob looked at the user"]["actor_name"] == "Bob Builder"
    assert rows["bob looked at the user"]["entity_id"] == pseudonym
    # An entity of a type that is not a subject's keeps its id: the policy's types, not ours.
    assert rows["a project of that id"]["entity_id"] == "alice"
    assert "Alice Liddell" not in rows["mentions [erased] and the word secretword"]["m"]
    assert "secretword" in rows["mentions [erased] and the word secretword"]["m"]
    assert rows["secretword stays; so does plan pro"]["actor_id"] == "bob"
    assert untouched == await pg.fetch(
        others.format("(entity_type = 'user' AND entity_id = $1) AND NOT metadata::text LIKE "
                      "'%[erased]%'"), pseudonym)  # fmt: skip
    # The store recorded the erasure, its batches and its event itself.
    state = await pg.fetchrow("SELECT * FROM erased_subject WHERE pseudonym = $1", pseudonym)
    assert state["state"] == "done" and state["rows"] == 4
    assert await pg.fetchval("SELECT count(*) FROM erasure_value") == 0
    event = await pg.fetchrow("SELECT * FROM audit_log WHERE action = 'subject.anonymised'")
    assert event["entity_id"] == pseudonym and event["received_via"] == "api"
    assert event["metadata"]["reason"] == "asked by [erased]"
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    report, lines = await run_verify(pg, seal_key)  # type: ignore[arg-type]
    assert report.findings == 0 and report.anonymised == 4, lines

    # Bob's rows cannot be given alice's pseudonym (it names an erased subject already).
    with pytest.raises(asyncpg.InvalidParameterValueError, match="already names"):
        await _erase(api_conn, "bob", pseudonym)
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE actor_id = 'bob'") == 3
    # Asking again for alice is harmless: nothing left to change.
    steps = await _erase(api_conn, "alice", pseudonym)
    assert sum(changed for changed, _, _ in steps) == 0


# --- The runtime refuses a role that could rewrite history -------------------------------


async def test_the_worker_and_the_api_refuse_a_privileged_role(
    pg: asyncpg.Connection,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
    database_url: str,
    role_password: str,
    tmp_path: Path,
) -> None:
    assert await check_runtime_role(worker_conn, who="worker") is None
    assert await check_runtime_role(api_conn, who="API") is None
    problem = await check_runtime_role(pg, who="worker")
    assert problem is not None and "a superuser" in problem
    role = f"auditq_test_rw_{uuid.uuid4().hex[:8]}"
    await pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role_password}'")
    try:
        await pg.execute(f"GRANT SELECT, UPDATE ON audit_log TO {role}")
        conn = await asyncpg.connect(url_as(database_url, role, role_password))
        try:
            problem = await check_runtime_role(conn, who="API")
            assert problem is not None and "may alter stored rows" in problem
            await pg.execute(f"REVOKE ALL ON audit_log FROM {role}")
            owner = await pg.fetchval(
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'audit_log'::regclass"
            )
            await pg.execute(f'GRANT "{owner}" TO {role}')  # here the owner is a superuser
            problem = await check_runtime_role(conn, who="API")
            assert problem is not None and "a superuser or a member of one" in problem
        finally:
            await conn.close()
    finally:
        await pg.execute(f"DROP OWNED BY {role}")
        await pg.execute(f"DROP ROLE {role}")

    # The commands themselves, as the suite's superuser: one line, a non-zero exit.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")} | {
        "AUDITQ_DATABASE_URL": database_url,
        "AUDITQ_REDIS_URL": "redis://127.0.0.1:1/0",
        "AUDITQ_DATA_DIR": str(tmp_path),
        "AUDITQ_SEAL_KEY_FILE": str(tmp_path / "seal-key"),
    }
    load_or_create_private_key(tmp_path / "seal-key")
    for command in ("worker", "api"):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service.cli.main", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "refuses to connect as" in lines[0], (command, done.stderr)
        assert "a superuser" in lines[0]


# Roles that are none of the three above but may become one: (what, the superuser's set-up
# of the role, what the role then runs). {owner}, {role}, {superuser} are formatted in.
BECOMING = [
    ("member of a superuser role", ['GRANT "{superuser}" TO {role}'], ['SET ROLE "{superuser}"']),
    ("member of the owner's role", ["GRANT {owner} TO {role}"], ["SET ROLE {owner}"]),
    # PostgreSQL 15 and older: CREATEROLE grants membership in any role but a superuser.
    ("CREATEROLE", ["ALTER ROLE {role} CREATEROLE"], [
        "GRANT {owner} TO {role}", "SET ROLE {owner}"]),
    # The append-only trigger still refuses its DELETE: refused as a role that may alter rows.
    ("member of a role that may delete rows", [
        "CREATE ROLE {role}_deleter NOLOGIN", "GRANT DELETE ON public.audit_log TO {role}_deleter",
        "ALTER ROLE {role} NOINHERIT", "GRANT {role}_deleter TO {role}"], [
        "SET ROLE {role}_deleter"]),
]  # fmt: skip
REWRITE = [
    "ALTER TABLE public.audit_log DISABLE TRIGGER USER",
    "UPDATE public.audit_log SET action = 'x.rewritten'",
]


async def _rewrites(conn: asyncpg.Connection, statements: list[str]) -> bool:
    """Whether `statements`, then rewriting every row, go through (rolled back either way)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        for statement in [*statements, *REWRITE]:
            await conn.execute(statement)
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await transaction.rollback()


@pytest.mark.parametrize("what", [b[0] for b in BECOMING])
async def test_a_role_that_may_become_a_privileged_one_is_refused(
    pg: asyncpg.Connection, database_url: str, role_password: str, what: str
) -> None:
    # A store as docs/integrity.md has a DBA make it: its own owner role, not a superuser.
    tag = uuid.uuid4().hex[:8]
    owner, role, name = f"auditq_test_own_{tag}", f"auditq_test_rt_{tag}", f"auditq_test_{tag}"
    superuser = await pg.fetchval("SELECT session_user")
    _, setup, attack = next(b for b in BECOMING if b[0] == what)
    fmt = {"owner": owner, "role": role, "superuser": superuser}
    await pg.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{role_password}'")
    await pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role_password}'")
    await pg.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
    url = database_url.rpartition("/")[0] + f"/{name}"
    try:
        await db.migrate(url_as(url, owner, role_password))
        conn = await asyncpg.connect(url_as(url, owner, role_password))
        try:
            await conn.execute(INSERT_AT, datetime.now(UTC))
        finally:
            await conn.close()
        as_super = await asyncpg.connect(url)
        try:
            for statement in setup:
                await as_super.execute(statement.format(**fmt))
        finally:
            await as_super.close()
        conn = await asyncpg.connect(url_as(url, role, role_password))
        try:
            worked = await _rewrites(conn, [s.format(**fmt) for s in attack])
            problem = await check_runtime_role(conn, who="worker")
        finally:
            await conn.close()
        # Where the role can rewrite history, the runtime refuses it (on PostgreSQL 16+
        # CREATEROLE no longer reaches roles it did not make: neither attack nor refusal).
        version = await pg.fetchval("SELECT current_setting('server_version_num')::int")
        rewrites = {"CREATEROLE": version < 160000, "member of a role that may delete rows": False}
        assert worked == rewrites.get(what, True), what
        assert (problem is not None) == (worked or what.endswith("rows")), (what, problem)
        if problem is not None:
            assert "refuses to connect as" in problem and "\n" not in problem
    finally:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for dropped in (f"{role}_deleter", role, owner):
            await pg.execute(
                f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{dropped}') "
                f"THEN EXECUTE 'DROP OWNED BY {dropped}'; EXECUTE 'DROP ROLE {dropped}'; "
                "END IF; END $$"
            )


async def test_a_worker_outside_auditq_run_mints_no_seal_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")} | {
        "AUDITQ_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "AUDITQ_REDIS_URL": "redis://127.0.0.1:1/0",
        "AUDITQ_DATA_DIR": str(tmp_path),
    }
    for extra, says in (
        ({}, "set AUDITQ_SEAL_KEY_FILE"),
        ({"AUDITQ_SEAL_KEY_FILE": str(tmp_path / "absent")}, "no seal key at"),
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service.cli.main", "worker"],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []  # no key made
