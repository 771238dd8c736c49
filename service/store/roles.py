"""The roles of docs/integrity.md ("Roles"): which role a process connects as (the worker and
the API refuse one that could rewrite history, contract §6), and the superuser's statements
that make them in a cluster auditq runs itself (service/embedded/servers.py, through psql)."""

from __future__ import annotations

import asyncpg

from service.errors import ConfigError

# The roles of docs/integrity.md: the schema's owner and the two runtime roles.
OWNER_ROLE, WORKER_ROLE, API_ROLE = "auditq_owner", "auditq_worker", "auditq_api"
# psql statements run as the superuser (values are auditq's own names and generated hex
# passwords, formatted in: psql takes no parameters in a DO block).
CREATE_DATABASE = (
    "SELECT 'CREATE DATABASE \"{name}\"' "
    "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec"
)
SET_PASSWORD = "ALTER ROLE {role} PASSWORD '{password}'"
ROLES_SQL = """
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['{owner}', '{worker}', '{api}'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END $$;
ALTER ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{owner_pw}';
ALTER ROLE {worker} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{worker_pw}';
ALTER ROLE {api} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{api_pw}';
"""
# A store made before the owner role existed belongs to the superuser: hand it over.
HAND_OVER_SQL = """
ALTER DATABASE "{database}" OWNER TO {owner};
DO $$
DECLARE o record;
BEGIN
    FOR o IN SELECT c.relname, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v')
               AND pg_get_userbyid(c.relowner) = '{superuser}'
               AND NOT (c.relkind = 'S' AND EXISTS (
                   SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %I OWNER TO {owner}',
                       CASE o.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                      ELSE 'TABLE' END, o.relname);
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) = '{superuser}'
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO {owner}', o.fn);
    END LOOP;
END $$;
"""

# What makes a role unfit for the runtime, itself or any role it may become (SET ROLE): a
# superuser (or one bypassing row security); the owner of the schema or of auditq's tables
# (it could disable triggers, drop partitions); any right to change stored rows directly; or,
# before PostgreSQL 16, CREATEROLE (it may grant itself the owner's role).
PRIVILEGES = """
WITH me AS (SELECT oid, rolname FROM pg_roles WHERE rolname = current_user),
become AS (SELECT r.* FROM pg_roles r, me WHERE pg_has_role(me.oid, r.oid, 'MEMBER'))
SELECT me.rolname,
       EXISTS (SELECT FROM become b WHERE b.rolsuper OR b.rolbypassrls) AS superuser,
       EXISTS (SELECT FROM become b WHERE b.oid IN (n.nspowner, c.relowner)) AS owner,
       EXISTS (SELECT FROM become b WHERE has_table_privilege(b.oid, c.oid, 'UPDATE')
               OR has_table_privilege(b.oid, c.oid, 'DELETE')
               OR has_table_privilege(b.oid, c.oid, 'TRUNCATE')) AS alters,
       EXISTS (SELECT FROM become b WHERE b.rolcreaterole)
           AND current_setting('server_version_num')::int < 160000 AS grants_roles
FROM me, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = 'public.audit_log'::regclass
"""


async def check_runtime_role(conn: asyncpg.Connection, *, who: str) -> str | None:
    """None when the connection's role is fit for `who` (the worker, the API); else why not."""
    row = await conn.fetchrow(PRIVILEGES)
    if row is None:
        raise ConfigError("the database has no audit_log: run `auditq migrate` first")
    what = (
        "a superuser or a member of one"
        if row["superuser"]
        else "the owner of the schema"
        if row["owner"]
        else "a role that may alter stored rows"
        if row["alters"]
        else "a role that may grant itself the owner's role (CREATEROLE)"
        if row["grants_roles"]
        else None
    )
    if what is None:
        return None
    return (
        f"the {who} refuses to connect as {row['rolname']}, {what}: give it its own role "
        '(auditq_worker / auditq_api, docs/integrity.md "Roles")'
    )
