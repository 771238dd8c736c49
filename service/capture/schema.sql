-- auditq capture (docs/capture.md): what `auditq capture install` puts in an APPLICATION's
-- database. Idempotent: applied again by every install. Everything lives in the schema
-- auditq_capture, except the three triggers on each captured table.
--
-- Nothing here is callable or readable by PUBLIC: the trigger functions run as the role that
-- installed them (SECURITY DEFINER), so the application's roles need no privilege on the
-- outbox, and cannot write a change into it that their table did not make.

CREATE SCHEMA IF NOT EXISTS auditq_capture;
REVOKE ALL ON SCHEMA auditq_capture FROM PUBLIC;

-- One row: who this database is to auditq. Event ids are derived from database_id and the
-- outbox row's id, so a relay that sends a row twice stores it once; a database whose outbox
-- was removed and made again gets a new database_id (its outbox ids start again).
CREATE TABLE IF NOT EXISTS auditq_capture.installation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    database_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    schema_created boolean NOT NULL,  -- install made the schema: the last uninstall drops it
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The captured tables and how their rows become events.
CREATE TABLE IF NOT EXISTS auditq_capture.captured_tables (
    table_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    entity text NOT NULL,             -- events are <entity>.created|updated|deleted
    key_columns text[] NOT NULL,      -- the primary key, in key order: entity.id
    columns text[] NOT NULL,          -- every column, in table order: the order of a diff
    ignore_fields text[] NOT NULL,    -- never in a diff (names, or dotted paths into JSON)
    mask_columns text[] NOT NULL,     -- never stored: a change says only that it changed
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (schema_name, table_name)
);

-- One row per changed row, written by the statement-level triggers in the application's
-- transaction (so a rollback leaves none), read in id order and deleted by the relay once
-- Redis has accepted its event.
CREATE TABLE IF NOT EXISTS auditq_capture.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_id integer NOT NULL,
    operation "char" NOT NULL,        -- c(reated), u(pdated), d(eleted)
    entity_id text NOT NULL,
    -- {"column": [old, new], ...}: every value of a created or deleted row (against null), the
    -- columns an update changed; never an ignored column; a masked column's pair is only
    -- [had a value, has one]. JSON text, built as text: a third of jsonb's cost per row.
    changes text NOT NULL,
    captured_at timestamptz NOT NULL,
    xid xid8 NOT NULL,
    actor_id text,
    actor_type text,
    request_id text
)
-- A queue table: every row is deleted soon after it is written. Vacuumed by dead rows, not
-- by a share of a table that is nearly always empty.
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

REVOKE ALL ON ALL TABLES IN SCHEMA auditq_capture FROM PUBLIC;

-- Make (or remake) the trigger function and the three statement-level triggers of `target`.
-- Identifiers are quoted by format(%I) here, in the server, never spliced in by the client.
-- The function names the table's columns: after changing them, install again (status says).
CREATE OR REPLACE FUNCTION auditq_capture.install_table(
    target regclass,
    entity text,
    ignore_fields text[],
    strip_columns text[],   -- top-level columns never written to the outbox (ignored, masked)
    mask_columns text[]
) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $install$
DECLARE
    target_schema text;
    target_name text;
    all_columns text[];
    key_columns text[];
    new_id integer;
    fn text;
    side_select text := '';   -- the columns each side of an UPDATE's pairing carries
    join_on text := '';
    entity_expr text;
    paired_entity_expr text;  -- the same over the paired keys of an UPDATE
    -- Per column, an expression that is '"col":[old,new]' when there is something to say,
    -- else NULL: for an INSERT (t is the new row), a DELETE (t the old), an UPDATE (o and n).
    inserted text[] := '{}';
    deleted text[] := '{}';
    updated text[] := '{}';
    exprs text[] := '{}';     -- the three joined into one JSON object each
    pairs text[];
    joined text;
    chunk text;
    which integer;
    col text;
    key text;
    typ oid;
    kind "char";
    category "char";
    base oid;
    element oid;
    typed boolean;
    i integer := 0;
BEGIN
    SELECT n.nspname, c.relname INTO target_schema, target_name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = target;
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) INTO all_columns
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord) INTO key_columns
    FROM pg_catalog.pg_index x
    CROSS JOIN LATERAL pg_catalog.unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
    WHERE x.indrelid = target AND x.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table %.% has no primary key: auditq capture needs one for entity.id',
            target_schema, target_name USING ERRCODE = 'invalid_table_definition';
    END IF;

    INSERT INTO auditq_capture.captured_tables AS t
        (schema_name, table_name, entity, key_columns, columns, ignore_fields, mask_columns)
    VALUES (target_schema, target_name, entity, key_columns, all_columns, ignore_fields,
            mask_columns)
    ON CONFLICT (schema_name, table_name) DO UPDATE
        SET entity = excluded.entity, key_columns = excluded.key_columns,
            columns = excluded.columns, ignore_fields = excluded.ignore_fields,
            mask_columns = excluded.mask_columns
    RETURNING t.table_id INTO new_id;
    fn := pg_catalog.format('auditq_capture.%I', 'capture_' || new_id);

    -- entity.id: the key's values as text, a composite key's joined by ':' (as the SQLAlchemy
    -- capture joins them).
    SELECT pg_catalog.string_agg(pg_catalog.format('t.%I::text', k), ' || '':'' || '),
           pg_catalog.string_agg(pg_catalog.format('COALESCE(n.k%1$s, o.k%1$s)::text', g),
                                 ' || '':'' || ')
    INTO entity_expr, paired_entity_expr
    FROM pg_catalog.unnest(key_columns) WITH ORDINALITY AS u(k, g);
    FOREACH col IN ARRAY key_columns LOOP
        i := i + 1;
        side_select := side_select || pg_catalog.format('t.%I AS k%s, ', col, i);
        join_on := join_on || pg_catalog.format('%s o.k%s = n.k%s',
                                                CASE WHEN i > 1 THEN ' AND' ELSE '' END, i, i);
    END LOOP;

    -- Each kept column is written as a pair; an UPDATE compares the old and the new row's
    -- column and writes only the pairs that differ. No whole-row images, no jsonb.
    i := 0;
    FOR col, typ IN
        SELECT a.attname::text, a.atttypid FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
    LOOP
        CONTINUE WHEN col = ANY (strip_columns) AND NOT col = ANY (mask_columns);
        i := i + 1;
        key := pg_catalog.quote_literal(pg_catalog.to_json(col)::text || ':');
        IF col = ANY (mask_columns) THEN
            -- A masked value is compared in memory (as text: every type has one) and never
            -- written: only whether it had one before and has one after.
            inserted := inserted || pg_catalog.format(
                'CASE WHEN t.%I IS NOT NULL THEN %s OPERATOR(pg_catalog.||) ''[false,true]'' END', col, key);
            deleted := deleted || pg_catalog.format(
                'CASE WHEN t.%I IS NOT NULL THEN %s OPERATOR(pg_catalog.||) ''[true,false]'' END', col, key);
            side_select := side_select || pg_catalog.format('t.%I::text AS c%s, ', col, i);
            updated := updated || pg_catalog.format(
                'CASE WHEN o.c%1$s IS DISTINCT FROM n.c%1$s THEN %2$s OPERATOR(pg_catalog.||) '
                'pg_catalog.json_build_array(o.c%1$s IS NOT NULL, n.c%1$s IS NOT NULL)::text END',
                i, key);
            CONTINUE;
        END IF;
        -- NULL (no pair) for a null value: a value that is not there did not change.
        inserted := inserted || pg_catalog.format(
            '%L OPERATOR(pg_catalog.||) pg_catalog.to_json(t.%I)::text OPERATOR(pg_catalog.||) '']''',
            pg_catalog.to_json(col)::text || ':[null,', col);
        deleted := deleted || pg_catalog.format(
            '%L OPERATOR(pg_catalog.||) pg_catalog.to_json(t.%I)::text OPERATOR(pg_catalog.||) '',null]''',
            pg_catalog.to_json(col)::text || ':[', col);
        -- Compared as themselves when the type (of a domain, of an array's elements) has a
        -- default btree ordering; json, point, composites... have none: compared as text.
        LOOP
            SELECT t.typtype, t.typcategory, t.typbasetype, t.typelem
            INTO kind, category, base, element FROM pg_catalog.pg_type t WHERE t.oid = typ;
            IF kind = 'd' THEN
                typ := base;
            ELSIF category = 'A' AND element <> 0 THEN
                typ := element;
            ELSE
                EXIT;
            END IF;
        END LOOP;
        typed := kind = 'e' OR (kind IN ('b', 'r', 'm') AND EXISTS (
            SELECT FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am m ON m.oid = c.opcmethod
            WHERE m.amname = 'btree' AND c.opcdefault AND c.opcintype = typ));
        side_select := side_select || pg_catalog.format('t.%I AS c%s, ', col, i);
        updated := updated || pg_catalog.format(
            CASE WHEN typed
                THEN 'CASE WHEN o.c%1$s IS DISTINCT FROM n.c%1$s THEN %2$s OPERATOR(pg_catalog.||) pg_catalog.json_build_array(o.c%1$s, n.c%1$s)::text END'
                ELSE 'CASE WHEN o.c%1$s::text IS DISTINCT FROM n.c%1$s::text THEN %2$s OPERATOR(pg_catalog.||) pg_catalog.json_build_array(o.c%1$s, n.c%1$s)::text END'
            END, i, key);
    END LOOP;

    -- '{' || the pairs that are not NULL, comma-separated || '}'. concat_ws takes at most
    -- 100 arguments: a wide table's pairs are joined 90 at a time.
    FOR which IN 1..3 LOOP
        pairs := CASE which WHEN 1 THEN inserted WHEN 2 THEN deleted ELSE updated END;
        joined := '';
        FOR chunk IN
            SELECT pg_catalog.string_agg(u.a, ', ' ORDER BY u.g)
            FROM pg_catalog.unnest(pairs) WITH ORDINALITY AS u(a, g)
            GROUP BY (u.g - 1) / 90 ORDER BY (u.g - 1) / 90
        LOOP
            joined := joined || CASE WHEN joined = '' THEN '' ELSE ', ' END
                || 'NULLIF(pg_catalog.concat_ws('','', ' || chunk || '), '''')';
        END LOOP;
        exprs := exprs || CASE WHEN joined = '' THEN '''{}'''
            ELSE '''{'' OPERATOR(pg_catalog.||) pg_catalog.concat_ws('','', ' || joined
                 || ') OPERATOR(pg_catalog.||) ''}''' END;
    END LOOP;

    -- One INSERT ... SELECT per statement over its transition tables: the context, the time
    -- and the transaction id are read once, not per row.
    EXECUTE pg_catalog.format($fn$
CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET work_mem = '64MB'
SET enable_mergejoin = off
AS $body$
DECLARE
    captured timestamptz := pg_catalog.clock_timestamp();
    x xid8 := pg_catalog.pg_current_xact_id();
    actor text := NULLIF(pg_catalog.current_setting('auditq.actor_id', true), '');
    actor_kind text := NULLIF(pg_catalog.current_setting('auditq.actor_type', true), '');
    request text := NULLIF(pg_catalog.current_setting('auditq.request_id', true), '');
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO auditq_capture.outbox (table_id, operation, entity_id, changes,
            captured_at, xid, actor_id, actor_type, request_id)
        SELECT %2$s, 'c', %3$s, %4$s, captured, x, actor, actor_kind, request
        FROM auditq_new_rows t;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO auditq_capture.outbox (table_id, operation, entity_id, changes,
            captured_at, xid, actor_id, actor_type, request_id)
        SELECT %2$s, 'd', %3$s, %5$s, captured, x, actor, actor_kind, request
        FROM auditq_old_rows t;
    ELSE
        -- Old and new rows pair up by primary key; a row whose key changed is the old key
        -- deleted and the new one created (each of its values then differs from nothing).
        INSERT INTO auditq_capture.outbox (table_id, operation, entity_id, changes,
            captured_at, xid, actor_id, actor_type, request_id)
        SELECT %2$s, d.op, d.e, d.changes, captured, x, actor, actor_kind, request
        FROM (
            SELECT CASE WHEN o.k1 IS NULL THEN 'c' WHEN n.k1 IS NULL THEN 'd' ELSE 'u' END::"char" AS op,
                   %9$s AS e,
                   %6$s AS changes
            FROM (SELECT %7$s FROM auditq_old_rows t) o
            FULL JOIN (SELECT %7$s FROM auditq_new_rows t) n ON %8$s
            OFFSET 0
        ) d
        WHERE d.changes OPERATOR(pg_catalog.<>) '{}';
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_catalog.pg_notify('auditq_capture', '');  -- delivered at commit, once
    END IF;
    RETURN NULL;
END
$body$
$fn$, fn, new_id, entity_expr, exprs[1], exprs[2], exprs[3],
      pg_catalog.rtrim(side_select, ', '), join_on, paired_entity_expr);
    -- Only this function's triggers may run it: nobody can point a trigger of their own
    -- table at it and write changes in this table's name.
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', fn);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER auditq_capture_insert AFTER INSERT ON %s '
        'REFERENCING NEW TABLE AS auditq_new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
        target, fn);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER auditq_capture_update AFTER UPDATE ON %s '
        'REFERENCING OLD TABLE AS auditq_old_rows NEW TABLE AS auditq_new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION %s()',
        target, fn);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER auditq_capture_delete AFTER DELETE ON %s '
        'REFERENCING OLD TABLE AS auditq_old_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
        target, fn);
    RETURN new_id;
END
$install$;

REVOKE ALL ON FUNCTION auditq_capture.install_table(regclass, text, text[], text[], text[])
    FROM PUBLIC;
