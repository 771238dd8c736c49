"""The privileges docs/capture.md names are enough, and the application's own roles cannot use
capture to forge or read changes (contract §12; attacks by a role of the application)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.capture import installer
from service.errors import ConfigError
from service.settings import Settings
from tests.support.capture import outbox_rows, relaying
from tests.support.polling import wait_for
from tests.support.queue import queued_events
from tests.support.servers import Servers


class Roles:
    """An owner (installs), a writer (the application at run time) and a relay role."""

    def __init__(self, app_url: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.names = {kind: f"{kind}_{suffix}" for kind in ("owner", "writer", "relay")}
        self.passwords = {kind: secrets.token_hex(12) for kind in self.names}
        self.app_url = app_url

    def url(self, kind: str) -> str:
        parts = urlsplit(self.app_url)
        netloc = f"{self.names[kind]}:{self.passwords[kind]}@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def roles(servers: Servers, app_url: str) -> AsyncIterator[Roles]:
    made = Roles(app_url)
    database = urlsplit(app_url).path.lstrip("/")
    admin = await asyncpg.connect(app_url)
    try:
        for kind, name in made.names.items():
            await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{made.passwords[kind]}'")
        owner, writer = made.names["owner"], made.names["writer"]
        # The owner: the application's migration role, owning its schema and tables, allowed
        # to create a schema in the database (what docs/capture.md asks for).
        await admin.execute(f'GRANT CREATE, CONNECT ON DATABASE "{database}" TO {owner}')
        await admin.execute(f"ALTER SCHEMA shop OWNER TO {owner}")
        await admin.execute(f"ALTER TABLE shop.items OWNER TO {owner}")
        # The writer: what the application runs as, reading and writing its table only.
        await admin.execute(f"GRANT USAGE ON SCHEMA shop TO {writer}")
        await admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON shop.items TO {writer}")
        await admin.execute(f"CREATE SCHEMA mine AUTHORIZATION {writer}")
        yield made
    finally:
        for name in made.names.values():
            await admin.execute(f"DROP OWNED BY {name} CASCADE")
        await admin.close()
        admin = await asyncpg.connect(servers.postgres_url)
        try:
            for name in made.names.values():
                await admin.execute(f"DROP OWNED BY {name} CASCADE")
                await admin.execute(f"DROP ROLE IF EXISTS {name}")
        finally:
            await admin.close()


RELAY_GRANTS = """
GRANT USAGE ON SCHEMA auditq_capture TO {relay};
GRANT SELECT ON auditq_capture.installation, auditq_capture.captured_tables TO {relay};
GRANT SELECT, DELETE ON auditq_capture.outbox TO {relay};
"""


async def test_the_documented_roles_install_write_and_relay(
    settings: Settings, roles: Roles, app: asyncpg.Connection, redis: object
) -> None:
    await installer.install(roles.url("owner"), "shop.items")
    owner = await asyncpg.connect(roles.url("owner"))
    try:
        await owner.execute(RELAY_GRANTS.format(relay=roles.names["relay"]))
    finally:
        await owner.close()
    writer = await asyncpg.connect(roles.url("writer"))
    try:
        async with writer.transaction():
            await writer.execute("SELECT set_config('auditq.actor_id', 'u-7', true)")
            await writer.execute("INSERT INTO shop.items (id, name) VALUES (1, 'a'), (2, 'b')")
    finally:
        await writer.close()
    assert await outbox_rows(app) == 2
    async with relaying(settings, roles.url("relay")):
        await wait_for(lambda: _empty(app), within_s=30)
    events = await queued_events(redis, settings.queue)  # type: ignore[arg-type]
    assert [(e["entity"]["id"], e["actor"]["id"]) for e in events] == [("1", "u-7"), ("2", "u-7")]
    assert await installer.uninstall(roles.url("owner"), "shop.items") is True


async def test_a_role_that_does_not_own_the_table_cannot_install(roles: Roles) -> None:
    with pytest.raises(ConfigError, match=r"docs/capture\.md, Privileges"):
        await installer.install(roles.url("writer"), "shop.items")


async def test_the_application_role_cannot_read_forge_or_borrow_the_capture(
    roles: Roles, app: asyncpg.Connection
) -> None:
    await installer.install(roles.url("owner"), "shop.items")
    writer = await asyncpg.connect(roles.url("writer"))
    try:
        for attack in (
            "SELECT * FROM auditq_capture.outbox",
            "INSERT INTO auditq_capture.outbox (table_id, operation, entity_id, captured_at, xid)"
            " VALUES (1, 'c', '99', now(), pg_current_xact_id())",
            "DELETE FROM auditq_capture.outbox",
            "UPDATE auditq_capture.captured_tables SET mask_columns = '{}'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(attack)
        # Even with the schema visible (a DBA granted it), the trigger function cannot be
        # pointed at a table of the writer's own to write changes in shop.items' name.
        await app.execute(f"GRANT USAGE ON SCHEMA auditq_capture TO {roles.names['writer']}")
        await writer.execute("CREATE TABLE mine.fake (id bigint PRIMARY KEY, name text)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="capture_1"):
            await writer.execute(
                "CREATE TRIGGER forge AFTER INSERT ON mine.fake REFERENCING NEW TABLE AS "
                "auditq_new_rows FOR EACH STATEMENT EXECUTE FUNCTION auditq_capture.capture_1()"
            )
        # The trigger resolves nothing through the writer's search_path: functions planted
        # where it would look first are not called.
        await writer.execute(
            "CREATE FUNCTION mine.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql "
            "AS $$ SELECT '{\"forged\": true}'::jsonb $$;"
            "CREATE FUNCTION mine.current_setting(text, boolean) RETURNS text LANGUAGE sql "
            "AS $$ SELECT 'forged-actor' $$;"
            "SET search_path = mine, pg_catalog"
        )
        await writer.execute("INSERT INTO shop.items (id, name) VALUES (5, 'real')")
    finally:
        await writer.close()
    row = await app.fetchrow("SELECT changes, actor_id FROM auditq_capture.outbox")
    assert row is not None
    assert row["actor_id"] is None
    assert row["changes"] == '{"id":[null,5],"name":[null,"real"]}'


async def _empty(app: asyncpg.Connection) -> bool:
    return await outbox_rows(app) == 0
