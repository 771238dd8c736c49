"""Which role a process connects as: the worker and the API refuse one that could rewrite
history (contract §6; docs/integrity.md, "Roles")."""

from __future__ import annotations

import asyncpg

from service.errors import ConfigError

# What makes a role unfit for the runtime: superuser (or bypassing row security), owner of
# the schema or of auditq's tables (it could disable triggers, drop partitions), or any right
# to change stored rows directly.
PRIVILEGES = """
SELECT r.rolname, r.rolsuper OR r.rolbypassrls AS superuser,
       pg_has_role(r.oid, n.nspowner, 'MEMBER') OR pg_has_role(r.oid, c.relowner, 'MEMBER')
           AS owner,
       has_table_privilege(r.oid, c.oid, 'UPDATE') OR has_table_privilege(r.oid, c.oid, 'DELETE')
           OR has_table_privilege(r.oid, c.oid, 'TRUNCATE') AS alters
FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rolname = current_user AND c.oid = 'public.audit_log'::regclass
"""


async def check_runtime_role(conn: asyncpg.Connection, *, who: str) -> str | None:
    """None when the connection's role is fit for `who` (the worker, the API); else why not."""
    row = await conn.fetchrow(PRIVILEGES)
    if row is None:
        raise ConfigError("the database has no audit_log: run `auditq migrate` first")
    what = (
        "a superuser"
        if row["superuser"]
        else "the owner of the schema"
        if row["owner"]
        else "a role that may alter stored rows"
        if row["alters"]
        else None
    )
    if what is None:
        return None
    return (
        f"the {who} refuses to connect as {row['rolname']}, {what}: give it its own role "
        '(auditq_worker / auditq_api, docs/integrity.md "Roles")'
    )
