"""Nobody can hijack auditq's definer functions: shadow overloads planted where PUBLIC may
create never run, and `auditq migrate` refuses such a schema (contract §6).

The attack (issue: least privilege): PostgreSQL picks an exact argument-type match anywhere
on the search path over pg_catalog's function that needs an implicit cast, so a
`public.pg_try_advisory_xact_lock(integer)` planted by a runtime role would run as the schema
owner inside a definer function called with `pg_try_advisory_xact_lock(<int4 literal>)`.
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from service.errors import ConfigError
from service.events import Actor, AuditEvent, finalize
from service.store import db
from service.store.rollup import fold_all
from tests.support.integrity import seal_all, store, url_as
from tests.support.stores import set_retention
from workers.maintenance import drop_expired_partitions
from workers.writer import write_events

# Functions of auditq's schema: their bodies name every function they call.
OUR_FUNCTIONS = """
SELECT p.proname, p.prosrc, p.prosecdef, p.prorettype = 'trigger'::regtype AS is_trigger,
       p.proconfig
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
  AND p.proowner = (SELECT relowner FROM pg_class WHERE oid = 'public.audit_log'::regclass)
"""
# pg_catalog's functions and aggregates of a name, with the argument and result types as SQL.
CATALOG_OVERLOADS = """
SELECT p.prokind::text AS prokind, p.proretset,
       array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY
             AS a(t, i) ORDER BY i) AS args,
       coalesce((  -- OUT parameters as the TABLE(...) a planted function can return
           SELECT 'TABLE(' || string_agg(format('%I %s', n, format_type(t, NULL)), ', '
                                         ORDER BY i) || ')'
           FROM unnest(p.proallargtypes, p.proargnames, p.proargmodes) WITH ORDINALITY
               AS o(t, n, m, i) WHERE m IN ('o', 't')), pg_get_function_result(p.oid)) AS result,
       p.provariadic <> 0 AS variadic
FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = $1
  AND p.prokind IN ('f', 'a')
"""
# A polymorphic or "any" argument is shadowed by concrete types (an exact match beats a
# polymorphic one): those auditq's functions pass.
CONCRETE = {
    "anyarray": ["text[]", "bigint[]", "integer[]", "bytea[]", "boolean[]", "jsonb[]"],
    "anyelement": ["text", "bigint", "integer", "jsonb", "boolean"],
    '"any"': ["text", "bigint", "integer", "jsonb", "boolean"],
}
CONCRETE |= {
    "anyrange": ["int8range"],
    "anymultirange": ["int8multirange"],
    "anycompatiblearray": CONCRETE["anyarray"],
    "anycompatible": CONCRETE["anyelement"],
    "anynonarray": CONCRETE["anyelement"],
    "anycompatiblenonarray": CONCRETE["anyelement"],
}
POLYMORPHIC = re.compile(r"\bany[a-z]+\b")
# A pseudo-type left in a result: no planted function can return it.
UNPLANTABLE = re.compile(r"\b(any\w*|internal|trigger|cstring|event_trigger|record)\b|\"any\"")
# A variadic "any" function (jsonb_build_object, format, ...) is shadowed by plain signatures.
VARIADIC_STAND_INS = [
    ["text"], ["text", "text"], ["text", "integer"], ["text", "jsonb"], ["text", "text", "text"],
    ["text", "text", "text", "text"], ["text", "date", "text", "date"],
]  # fmt: skip
# Types a literal or an expression of a definer function may carry where pg_catalog's own
# function wants another one (int4 for int8, date for a timestamp, ...).
NEAR_TYPES = {
    "bigint": ["integer", "smallint", "numeric"],
    "integer": ["smallint", "bigint", "numeric"],
    "numeric": ["integer", "bigint"],
    "double precision": ["integer", "numeric"],
    "timestamp without time zone": ["date", "timestamp with time zone"],
    "timestamp with time zone": ["date", "timestamp without time zone"],
    "text": ["character varying", "name", "character"],
    "bytea": ["text"],
    "jsonb": ["json", "text"],
    "regclass": ["text", "oid"],
}
CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)
# Counted when it runs as another role than the session's: inside a definer function.
PLANTED_BODY = (
    "BEGIN IF current_user <> session_user THEN "
    "PERFORM pg_catalog.nextval('public.hijack_seq'::pg_catalog.regclass); "
    "INSERT INTO public.hijacked VALUES (current_user, {name!r}); END IF; RETURN{result}; END"
)


def variants(args: list[str]) -> list[tuple[str, ...]]:
    """The signature itself, each argument swapped for a near type, and all swapped at once."""
    found = {tuple(args)}
    for i, arg in enumerate(args):
        for near in NEAR_TYPES.get(arg, []):
            found.add((*args[:i], near, *args[i + 1 :]))
    if len(args) <= 3:
        found |= set(itertools.product(*([a, *NEAR_TYPES.get(a, [])[:1]] for a in args)))
    return sorted(found)


async def called_names(conn: asyncpg.Connection) -> set[str]:
    """Every pg_catalog function name that auditq's functions call."""
    names: set[str] = set()
    for row in await conn.fetch(OUR_FUNCTIONS):
        names |= {m.lower() for m in CALL.findall(row["prosrc"])}
    catalog = {
        r["proname"]
        for r in await conn.fetch(
            "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace"
        )
    }
    return names & catalog


def concrete_result(result: str, args: list[str], signature: tuple[str, ...]) -> str | None:
    """The result of a planted overload with `signature` (polymorphic types resolved), or None
    when it cannot be planted."""
    resolved: dict[str, str] = {}
    for arg, concrete in zip(args, signature, strict=False):
        if arg in ("anyrange", "anymultirange"):
            resolved |= {"anyrange": "int8range", "anymultirange": "int8multirange"}
            element = "bigint"
        elif arg in ("anyarray", "anycompatiblearray"):
            element = concrete.removesuffix("[]")
        elif arg in CONCRETE:
            element = concrete
        else:
            continue
        resolved |= {"anyarray": f"{element}[]", "anycompatiblearray": f"{element}[]"}
        resolved |= dict.fromkeys(
            ("anyelement", "anynonarray", "anycompatible", "anycompatiblenonarray"), element
        )
    result = POLYMORPHIC.sub(lambda m: resolved.get(m[0], m[0]), result)
    if result.startswith("TABLE("):
        return result  # OUT parameters: a row type of its own
    return None if UNPLANTABLE.search(result) else result


def signatures(overload: asyncpg.Record) -> list[tuple[str, ...]]:
    """The argument types to plant for one of pg_catalog's overloads."""
    args = list(overload["args"])
    if overload["variadic"]:
        return [tuple(a) for a in VARIADIC_STAND_INS]
    if any(a in CONCRETE for a in args):
        return sorted(set(itertools.product(*(CONCRETE.get(a, [a]) for a in args))))
    return variants(args)


async def plant(conn: asyncpg.Connection, names: set[str]) -> list[str]:
    """Plant, as `conn`'s role, shadow overloads of every name in public; the signatures."""
    planted: list[str] = []
    counter = itertools.count()
    for name in sorted(names):
        for overload in await conn.fetch(CATALOG_OVERLOADS, name):
            for args in signatures(overload):
                ret = concrete_result(overload["result"], list(overload["args"]), args)
                if ret is None and overload["variadic"]:
                    ret = "text"
                if ret is None:
                    continue
                signature = ", ".join(args)
                empty = ret == "void" or overload["proretset"]  # RETURN; ends a set too
                body = PLANTED_BODY.format(name=name, result="" if empty else " NULL")
                if overload["prokind"] == "f":
                    statement = (
                        f'CREATE FUNCTION public."{name}"({signature}) RETURNS {ret} '
                        f"LANGUAGE plpgsql AS $$ {body} $$"
                    )
                    statements = [statement]
                else:  # an aggregate: its state function records the call
                    sfunc = f"hijack_sfunc_{next(counter)}"
                    statements = [
                        f"CREATE FUNCTION public.{sfunc}({', '.join([ret, *args])}) "
                        f"RETURNS {ret} LANGUAGE plpgsql AS $$ {body} $$",
                        f'CREATE AGGREGATE public."{name}"({signature or "*"}) '
                        f"(SFUNC = public.{sfunc}, STYPE = {ret})",
                    ]
                try:
                    async with conn.transaction():
                        for statement in statements:
                            await conn.execute(statement)
                except asyncpg.PostgresError:
                    continue  # a signature PostgreSQL will not take (or one planted already)
                planted.append(f"{name}({signature})")
    return planted


async def hijacks(pg: asyncpg.Connection) -> int:
    """How often a planted function ran (a sequence: rollbacks do not undo it)."""
    row = await pg.fetchrow("SELECT last_value, is_called FROM public.hijack_seq")
    return int(row["last_value"]) if row["is_called"] else 0


@pytest.fixture
async def open_public(pg: asyncpg.Connection) -> None:
    """The database left as the issue found it: PUBLIC may create in public."""
    await pg.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    await pg.execute("CREATE SEQUENCE public.hijack_seq")
    await pg.execute("GRANT USAGE, UPDATE, SELECT ON SEQUENCE public.hijack_seq TO PUBLIC")
    await pg.execute("CREATE TABLE public.hijacked (who text, name text)")
    await pg.execute("GRANT INSERT ON public.hijacked TO PUBLIC")


async def test_every_definer_and_trigger_function_pins_its_search_path(
    pg: asyncpg.Connection,
) -> None:
    rows = await pg.fetch(OUR_FUNCTIONS)
    assert len(rows) > 20
    loose = [
        r["proname"]
        for r in rows
        if "search_path=pg_catalog, pg_temp" not in (r["proconfig"] or [])
    ]
    assert loose == []


@pytest.mark.usefixtures("open_public")
async def test_shadow_overloads_planted_by_a_runtime_role_never_run(
    pg: asyncpg.Connection,
    worker_conn: asyncpg.Connection,
    api_conn: asyncpg.Connection,
    seal_key: object,
) -> None:
    # The worker's own work before the attack (its own statements would meet the planted
    # functions too, as itself: that is no escalation, and not what this test is about).
    now = datetime.now(UTC)
    await store(worker_conn, 5)
    eve = [  # a subject with a name, and a row of someone else's that mentions her
        AuditEvent(action="doc.viewed", actor=Actor(id="e-1", type="user", name="Eve One"),
                   metadata={"note": "hers"}),
        AuditEvent(action="doc.viewed", actor=Actor(id="x-2", type="user"),
                   metadata={"note": "Eve One was here", "path": "/users/e-1/files"}),
    ]  # fmt: skip
    await write_events(worker_conn, [finalize(e)[0] for e in eve], received_via="redis:t")
    await seal_all(worker_conn, seal_key)  # type: ignore[arg-type]
    names = await called_names(pg)
    assert {"pg_try_advisory_xact_lock", "pg_advisory_xact_lock", "to_char", "sha256"} <= names
    planted = await plant(worker_conn, names)
    assert "pg_try_advisory_xact_lock(integer)" in planted
    assert "to_char(date, text)" in planted
    assert {"pg_advisory_xact_lock(integer)", "unnest(text[])", "jsonb_each(json)"} <= set(planted)
    assert names == {p.split("(")[0] for p in planted}  # every name, a function of each kind

    # The attack works against a definer function as the issue found them (search_path =
    # public, pg_temp): the planted function runs, as the function's owner.
    await pg.execute(
        "CREATE FUNCTION public.old_style() RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = public, pg_temp AS "
        "$$ BEGIN RETURN pg_try_advisory_xact_lock(1919904876) IS NULL; END $$"
    )
    await pg.execute("GRANT EXECUTE ON FUNCTION public.old_style() TO PUBLIC")
    assert await worker_conn.fetchval("SELECT public.old_style()") is True
    assert await hijacks(pg) == 1
    assert await pg.fetchval("SELECT who FROM public.hijacked") == await pg.fetchval(
        "SELECT session_user"
    )
    await pg.execute("DROP FUNCTION public.old_style()")
    await pg.execute("TRUNCATE public.hijacked")

    # Every path through auditq's functions, by the runtime roles (calling them with public
    # first on their own path) and by the owner: none of the planted functions runs.
    public_first = "SET search_path = public, pg_catalog"
    await worker_conn.execute(  # the seal and rollup triggers
        "INSERT INTO audit_log (id, ts, action, category, severity, outcome, presentation) "
        "VALUES ($1::uuid, $2::timestamptz, 'a.b', 'a', 'info', 'success', '{}'::jsonb)",
        uuid.uuid4(),
        now - timedelta(days=400),
    )
    async with worker_conn.transaction():
        await worker_conn.execute(public_first.replace("SET", "SET LOCAL"))
        assert await fold_all(worker_conn) >= 1
        month = date(now.year - 3, 1, 1)
        assert await worker_conn.fetchval("SELECT auditq_ensure_partition($1)", month)
    await set_retention(pg, 365)  # the policy's triggers, as the owner
    async with worker_conn.transaction():
        await worker_conn.execute(public_first.replace("SET", "SET LOCAL"))
        assert await drop_expired_partitions(worker_conn) == [f"audit_log_y{month.year}m01"]
        # Pruning the delivery log stops at its oldest entry, whose rows are kept.
        assert await worker_conn.fetchval("SELECT auditq_prune_delivery_log(100::integer)") == 0
    await api_conn.execute(public_first)
    await api_conn.fetchval(
        "SELECT auditq_record_admin_event($1::jsonb)",
        {"action": "task.retried", "actor": {"id": "x", "type": "api_token"}},
    )
    by = {"actor": {"id": "t", "type": "api_token"}, "source": "tests"}
    await api_conn.fetchval(
        "SELECT auditq_create_token('n', 'reader', $1, $2::jsonb)", uuid.uuid4().bytes * 2, by
    )
    await api_conn.fetchval("SELECT auditq_revoke_token('n', $1::jsonb)", by)
    await api_conn.fetchval(
        "SELECT auditq_record_verification($1::timestamptz, $2::jsonb, $3::jsonb)",
        now,
        {"intact": True},
        by,
    )
    # Destinations, every change the API may make (each with its record).
    ident = await api_conn.fetchval(
        "SELECT auditq_add_destination('d', 'webhook', 'https://d.example/', 'json', '',"
        " '{}'::jsonb, '{}'::jsonb, 's'::text, $1::timestamptz, 't', $2::jsonb)",
        now - timedelta(days=1),
        by,
    )
    assert await api_conn.fetchval(
        "SELECT auditq_update_destination($1::bigint, 'https://e.example/', 'json', '',"
        " '{}'::jsonb, '{}'::jsonb, false, NULL::text, true, ARRAY['paused']::text[],"
        " $2::jsonb)",
        ident,
        by,
    )
    assert await api_conn.fetchval("SELECT auditq_set_destination_paused('d', true, $1::jsonb)", by)
    assert await api_conn.fetchval(
        "SELECT auditq_backfill_destination($1::bigint, $2::timestamptz, $3::jsonb)",
        ident,
        now - timedelta(days=1),
        by,
    )
    assert await api_conn.fetchval("SELECT auditq_remove_destination('d', $1::jsonb)", by)
    # Erasure, start to end, through the one function the API may call.
    pseudonym = "anon_" + "c" * 32
    await api_conn.fetchval("SELECT auditq_register_erasure($1::text)", pseudonym)
    assert (
        await api_conn.fetchval(
            "SELECT auditq_register_mentions($1::text, $2::bytea[], $3::bytea[], $4::integer[],"
            " $5::boolean[], $6::boolean[])",
            pseudonym, [b"\x01" * 16], [b"\x02" * 16], [1], [True], [False],
        )
        == 1
    )  # fmt: skip
    done = False
    while not done:
        done = await api_conn.fetchval(
            "SELECT done FROM auditq_erase_subject($1::text, $2::text, $3::text, 0::bigint,"
            " $4::jsonb, 2::integer)",
            "e-1",
            pseudonym,
            "asked",
            by,
        )
    changed = await pg.fetchval("SELECT rows FROM erased_subject WHERE pseudonym = $1", pseudonym)
    assert changed == 2  # every step of the erasure ran, through the planted names
    assert await hijacks(pg) == 1  # the old-style function's run, and no other
    assert await pg.fetchval("SELECT count(*) FROM public.hijacked") == 0


@pytest.mark.usefixtures("open_public")
async def test_migrate_refuses_a_schema_where_others_may_create(
    pg: asyncpg.Connection, database_url: str, role_password: str
) -> None:
    # A migrating role that does not own schema public, so it cannot revoke what PUBLIC has.
    role = f"auditq_test_owner_{uuid.uuid4().hex[:8]}"
    await pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role_password}'")
    try:
        with pytest.raises(ConfigError) as refused:
            await db.migrate(url_as(database_url, role, role_password))
        message = str(refused.value)
        assert "\n" not in message
        assert "PUBLIC" in message and "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in message
        # Closed by its owner, migrate goes through (as the owner: it owns the objects).
        await pg.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await db.migrate(database_url)
    finally:
        await pg.execute(f"DROP OWNED BY {role}")
        await pg.execute(f"DROP ROLE {role}")


@pytest.mark.usefixtures("open_public")
async def test_migrate_refuses_a_schema_holding_a_runtime_roles_functions(
    pg: asyncpg.Connection, worker_conn: asyncpg.Connection, database_url: str
) -> None:
    await worker_conn.execute(
        "CREATE FUNCTION public.pg_try_advisory_xact_lock(integer) RETURNS boolean "
        "LANGUAGE sql AS 'SELECT true'"
    )
    await pg.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # closed, but too late
    with pytest.raises(ConfigError, match="auditq_worker") as refused:
        await db.migrate(database_url)
    assert "DROP OWNED BY" in str(refused.value) and "\n" not in str(refused.value)
    await pg.execute("DROP OWNED BY auditq_worker")
    await db.migrate(database_url)
