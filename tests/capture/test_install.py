"""Install, uninstall and status in an application database: idempotent, exact, refusing
to lose changes, and leaving the schema as it found it (contract §12)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest

from service.capture import installer
from service.embedded.servers import PG_BIN
from service.errors import ConfigError
from service.settings import Settings
from tests.support.capture import outbox_rows, relaying
from tests.support.cli import run_cli
from tests.support.polling import wait_for

# Everything a schema is made of, with owners and privileges: what pg_dump may not print.
CATALOG = """
SELECT 'schema' AS kind, nspname::text AS name, coalesce(nspacl::text, '') AS detail
FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'relation', c.oid::regclass::text, c.relkind::text || ' ' || coalesce(c.relacl::text, '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, coalesce(p.proacl::text, '')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || ' ' || tgname, tgenabled::text
FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'type', t.oid::regtype::text, ''
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
ORDER BY 1, 2, 3
"""

ORDERS_DDL = """
CREATE TABLE shop.orders (
    region text NOT NULL,
    number integer NOT NULL,
    total integer,
    PRIMARY KEY (region, number)
);
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.total := coalesce(NEW.total, 0); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
"""


def pg_dump(url: str) -> str:
    """The schema as pg_dump prints it (the suite's own PostgreSQL's pg_dump)."""
    parts = urlsplit(url)
    result = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", "--no-comments", "-h", parts.hostname or "",
         "-p", str(parts.port), "-U", parts.username or "", parts.path.lstrip("/")],
        env={**os.environ, "PGPASSWORD": parts.password or ""},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    # Its \restrict lines carry a random key, new in every dump.
    keyed = ("\\restrict ", "\\unrestrict ")
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(keyed))


async def catalog(app: asyncpg.Connection) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in await app.fetch(CATALOG)]


async def test_uninstall_leaves_the_application_schema_exactly_as_it_was(
    settings: Settings, app_url: str, app: asyncpg.Connection
) -> None:
    await app.execute(ORDERS_DDL)
    dump_before = await asyncio.to_thread(pg_dump, app_url)
    catalog_before = await catalog(app)

    await installer.install(app_url, "shop.items", mask=["ssn"])
    await installer.install(app_url, "shop.orders", ignore=["total"])
    await installer.install(app_url, "shop.items", mask=["ssn"])  # again: harmless
    assert await catalog(app) != catalog_before
    await app.execute("INSERT INTO shop.items (id, name, ssn) VALUES (1, 'a', 'x')")
    await app.execute("INSERT INTO shop.orders (region, number) VALUES ('eu', 7)")

    # Changes not relayed yet are not thrown away by an uninstall, unless asked to.
    with pytest.raises(ConfigError, match=r"1 changes of shop\.items are still in the outbox"):
        await installer.uninstall(app_url, "shop.items")
    assert [r.table for r in await installer.status(app_url)] == ["shop.items", "shop.orders"]
    async with relaying(settings, app_url):
        await wait_for(lambda: _empty(app), within_s=30)
    assert await installer.uninstall(app_url, "shop.items") is False
    # The other table is still captured, and the outbox with it.
    await app.execute("UPDATE shop.orders SET total = 5")  # ignored: nothing to say
    assert await outbox_rows(app) == 0
    await app.execute("INSERT INTO shop.orders (region, number) VALUES ('us', 8)")
    assert await outbox_rows(app) == 1
    assert await installer.uninstall(app_url, "shop.orders", discard_pending=True) is True

    assert await catalog(app) == catalog_before
    assert await asyncio.to_thread(pg_dump, app_url) == dump_before
    assert await installer.status(app_url) == []
    with pytest.raises(ConfigError, match="is not captured"):
        await installer.uninstall(app_url, "shop.items")


async def test_a_schema_the_dba_made_for_capture_is_kept_with_its_grants(
    app_url: str, app: asyncpg.Connection
) -> None:
    await app.execute(
        "CREATE SCHEMA auditq_capture; GRANT USAGE ON SCHEMA auditq_capture TO PUBLIC"
    )
    before = await catalog(app)
    await installer.install(app_url, "shop.items")
    assert await installer.uninstall(app_url, "shop.items", discard_pending=True) is True
    # install revoked PUBLIC's usage while it held the outbox; that is the one change left.
    after = await catalog(app)
    assert [row for row in after if row[0] != "schema"] == [
        row for row in before if row[0] != "schema"
    ]
    assert any(row[1] == "auditq_capture" for row in after)


async def test_installing_again_applies_new_options(app_url: str, app: asyncpg.Connection) -> None:
    await installer.install(app_url, "shop.items")
    result = await installer.install(app_url, "shop.items", entity="stock.item", mask=["name"])
    assert result.entity == "stock.item"
    assert result.masked == ("name", "api_token")  # api_token: by the redaction rules
    assert result.stripped == ("name", "api_token", "updated_at")
    await app.execute("INSERT INTO shop.items (id, name) VALUES (1, 'secret-name')")
    changes = await app.fetchval("SELECT changes FROM auditq_capture.outbox")
    assert changes == '{"id":[null,1],"name":[false,true]}'
    assert [t.entity for t in await installer.status(app_url)] == ["stock.item"]
    assert await app.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'auditq%'") == 3


async def test_a_masked_value_never_reaches_the_outbox_or_redis(
    settings: Settings, app_url: str, app: asyncpg.Connection, redis: object
) -> None:
    from tests.support.queue import queued_events

    await installer.install(app_url, "shop.items", mask=["ssn"])
    await app.execute(
        "INSERT INTO shop.items (id, name, ssn, api_token) VALUES (1, 'a', 'ssn-1', 'tok-1')"
    )
    await app.execute("UPDATE shop.items SET ssn = 'ssn-2', api_token = 'tok-2'")
    await app.execute("DELETE FROM shop.items")
    outbox = await app.fetch("SELECT o::text AS row FROM auditq_capture.outbox o")
    assert len(outbox) == 3
    assert not [r for r in outbox if "ssn-" in r["row"] or "tok-" in r["row"]]
    async with relaying(settings, app_url):  # no worker: the events stay queued in Redis
        await wait_for(lambda: _empty(app), within_s=30)
    events = await queued_events(redis, settings.queue)  # type: ignore[arg-type]
    assert [e["action"] for e in events] == ["items.created", "items.updated", "items.deleted"]
    assert "ssn-" not in str(events) and "tok-" not in str(events)
    assert events[1]["changes"] == [
        {"field": "ssn", "old": "[REDACTED]", "new": "[REDACTED]"},
        {"field": "api_token", "old": "[REDACTED]", "new": "[REDACTED]"},
    ]


async def test_bad_requests_are_one_clear_line(
    app_url: str, app: asyncpg.Connection, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    await app.execute("CREATE TABLE shop.nokey (a int)")
    cases = [
        (["--table", "shop.missing"], "no table shop.missing"),
        (["--table", "shop.nokey"], "has no primary key"),
        (["--table", "shop.items", "--mask", "nope"], "--mask names no column"),
        (["--table", "shop.items", "--entity", "Bad Entity"], "pass --entity"),
    ]
    for extra, message in cases:
        status = await run_cli("capture", "install", "--database-url", app_url, *extra)
        err = capsys.readouterr().err
        assert status == 2, extra
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    status = await run_cli(
        "capture", "status", "--database-url", "postgresql://nobody@127.0.0.1:1/none"
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("auditq: cannot reach the application database")
    assert await app.fetchval("SELECT to_regnamespace('auditq_capture') IS NULL")


async def test_status_shows_each_table_and_its_lag(
    app_url: str, app: asyncpg.Connection, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await run_cli("capture", "install", "--database-url", app_url, "--table", "shop.items") == 0
    )
    await app.execute(
        "INSERT INTO shop.items (id, name) SELECT g, 'x' FROM generate_series(1, 3) g"
    )
    capsys.readouterr()
    assert await run_cli("capture", "status", "--database-url", app_url) == 0
    out = capsys.readouterr().out
    assert "1 captured table(s)" in out
    assert "shop.items  entity=items  pending=3  lag_s=" in out


async def _empty(app: asyncpg.Connection) -> bool:
    return await outbox_rows(app) == 0


async def test_status_says_when_the_tables_columns_changed_since_install(
    app_url: str, app: asyncpg.Connection, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    await installer.install(app_url, "shop.items")
    assert [t.current for t in await installer.status(app_url)] == [True]
    await app.execute("ALTER TABLE shop.items ADD COLUMN colour text")
    assert [t.current for t in await installer.status(app_url)] == [False]
    assert await run_cli("capture", "status", "--database-url", app_url) == 0
    assert "its columns changed since install" in capsys.readouterr().out
    await installer.install(app_url, "shop.items")  # picks the new column up
    assert [t.current for t in await installer.status(app_url)] == [True]
    await app.execute("INSERT INTO shop.items (id, name, colour) VALUES (1, 'a', 'red')")
    changes = await app.fetchval("SELECT changes FROM auditq_capture.outbox")
    assert changes == '{"id":[null,1],"name":[null,"a"],"colour":[null,"red"]}'


@pytest.mark.parametrize("action", ["install", "uninstall", "status", "relay"])
def test_every_capture_command_has_help(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["capture", action, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: auditq capture {action}" in capsys.readouterr().out


async def test_the_relay_without_a_database_says_so(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUDITQ_CAPTURE_DATABASE_URLS", raising=False)
    assert await run_cli("capture", "relay") == 2
    err = capsys.readouterr().err
    assert err == (
        "auditq: no application database: pass --database-url or set AUDITQ_CAPTURE_DATABASE_URLS\n"
    )


async def test_columns_of_types_without_equality_are_compared_as_text(
    app_url: str, app: asyncpg.Connection
) -> None:
    """json, point, box and composite columns have no default btree ordering: compared as
    text; arrays and domains by their element or base type."""
    await app.execute(
        "CREATE TYPE shop.dims AS (w int, h int);"
        "CREATE DOMAIN shop.qty AS integer CHECK (VALUE >= 0);"
        "CREATE TABLE shop.odd (id uuid PRIMARY KEY, doc json, spot point, b box, d shop.dims,"
        " tags text[], docs json[], q shop.qty, at timestamptz, raw bytea)"
    )
    await installer.install(app_url, "shop.odd")
    key = "6f1d0b4e-0000-4000-8000-000000000001"
    await app.execute(
        "INSERT INTO shop.odd VALUES ($1, '{\"a\": 1}', '(1,2)', '((1,1),(0,0))', ROW(1, 2),"
        " '{x,y}', ARRAY['{}'::json], 3, '2026-01-02T03:04:05Z', '\\x00ff')",
        uuid.UUID(key),
    )
    await app.execute(
        "UPDATE shop.odd SET doc = '{\"a\": 2}', spot = '(1,3)', b = '((2,2),(0,0))',"
        " d = ROW(1, 3), tags = '{x}', docs = ARRAY['[]'::json], q = 4"
    )
    await app.execute("UPDATE shop.odd SET doc = doc, spot = spot, b = b, d = d")  # no change
    rows = await app.fetch("SELECT operation::text, entity_id, changes FROM auditq_capture.outbox")
    assert [(r["operation"], r["entity_id"]) for r in rows] == [("c", key), ("u", key)]
    assert msgspec.json.decode(rows[1]["changes"]) == {
        "doc": [{"a": 1}, {"a": 2}],
        "spot": ["(1,2)", "(1,3)"],
        "b": ["(1,1),(0,0)", "(2,2),(0,0)"],
        "d": [{"w": 1, "h": 2}, {"w": 1, "h": 3}],
        "tags": [["x", "y"], ["x"]],
        "docs": [[{}], [[]]],
        "q": [3, 4],
    }
    created = msgspec.json.decode(rows[0]["changes"])
    assert created["raw"] == [None, "\\x00ff"] and created["at"] == [
        None,
        "2026-01-02T03:04:05+00:00",
    ]


async def test_a_composite_key_is_the_entity_id_and_a_changed_key_is_a_delete_and_a_create(
    app_url: str, app: asyncpg.Connection
) -> None:
    """Through the trigger itself: a composite key's values joined by ':' (as the SQLAlchemy
    capture joins them); an UPDATE that moves a row to another key is the old key deleted and
    the new one created, beside an ordinary update in the same statement."""
    await app.execute(ORDERS_DDL)
    await installer.install(app_url, "shop.orders", entity="order")
    await app.execute(
        "INSERT INTO shop.orders (region, number, total) VALUES ('eu', 7, 10), ('us', 8, 20)"
    )
    await app.execute("DELETE FROM auditq_capture.outbox")
    await app.execute(
        "UPDATE shop.orders SET number = CASE WHEN region = 'eu' THEN 9 ELSE number END,"
        " total = total + 1"
    )
    rows = await app.fetch(
        "SELECT operation::text AS op, entity_id, changes FROM auditq_capture.outbox"
    )
    got = sorted((r["op"], r["entity_id"], msgspec.json.decode(r["changes"])) for r in rows)
    assert got == [
        ("c", "eu:9", {"region": [None, "eu"], "number": [None, 9], "total": [None, 11]}),
        ("d", "eu:7", {"region": ["eu", None], "number": [7, None], "total": [10, None]}),
        ("u", "us:8", {"total": [20, 21]}),
    ]
