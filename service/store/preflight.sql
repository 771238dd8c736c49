-- Run by `auditq migrate` before anything else, on every store, new or old
-- (service/store/db.py): no role but the owner may create objects where auditq's live, or
-- a function or table planted there could stand in for one of ours (docs/integrity.md,
-- "Definer functions"). It revokes what it may and refuses a schema in which PUBLIC or a
-- runtime role still may create.
DO $$
DECLARE
    v_who  text;
    v_role text;
BEGIN
    BEGIN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;  -- not the schema's owner: checked below
    END;
    FOREACH v_role IN ARRAY ARRAY['auditq_worker', 'auditq_api'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA public FROM %I', v_role);
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;
            END;
        END IF;
    END LOOP;
    SELECT pg_catalog.string_agg(w, ', ') INTO v_who FROM (
        SELECT 'PUBLIC' AS w FROM pg_catalog.pg_namespace n,
               pg_catalog.aclexplode(coalesce(n.nspacl,
                                              pg_catalog.acldefault('n'::"char", n.nspowner))) a
        WHERE n.nspname = 'public' AND a.grantee = 0::oid AND a.privilege_type = 'CREATE'
        UNION ALL
        SELECT r.rolname::text FROM pg_catalog.pg_roles r
        WHERE r.rolname IN ('auditq_worker', 'auditq_api')
          AND pg_catalog.has_schema_privilege(r.oid, 'public'::text, 'CREATE'::text)) s;
    IF v_who IS NOT NULL THEN
        RAISE EXCEPTION 'schema public lets % create objects, which could stand in for auditq''s: as its owner or a superuser run REVOKE CREATE ON SCHEMA public FROM PUBLIC, auditq_worker, auditq_api; then migrate again', v_who
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Functions someone else planted there already would run as this role (the owner) in
    -- this very script.
    SELECT pg_catalog.string_agg(DISTINCT r.rolname::text, ', ') INTO v_who
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
    WHERE p.pronamespace = 'public'::regnamespace AND r.rolname <> current_user AND NOT r.rolsuper;
    IF v_who IS NOT NULL THEN
        RAISE EXCEPTION 'schema public holds functions of % that could stand in for auditq''s: drop them as a superuser (DROP OWNED BY them in this database), REVOKE CREATE ON SCHEMA public FROM PUBLIC, then migrate again', v_who
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END;
$$;
