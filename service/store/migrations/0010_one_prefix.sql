-- Migration 0010: one prefix for every function of auditq, `auditq_`. Five were named
-- `audit_*`: audit_row_digest -> auditq_row_digest, audit_log_queue_seal -> auditq_queue_seal,
-- audit_log_queue_rollup -> auditq_queue_rollup, audit_log_queue_delivery ->
-- auditq_queue_delivery, audit_log_append_only -> auditq_audit_log_append_only.
-- A rename keeps each function's oid, so its triggers (whose names stay: a trigger is named
-- for its table) and its grants follow it. Bodies that call one by name (retention and
-- erasure call the row digest) are made again with the new name, from their own definition,
-- so whatever the earlier migrations left in them stays. Idempotent, like every migration.

DO $$
DECLARE
    v_old  text;
    v_new  text;
    v_args text;
    v_fn   record;
BEGIN
    FOR v_old, v_new, v_args IN VALUES
        ('audit_row_digest', 'auditq_row_digest', 'public.audit_log'),
        ('audit_log_queue_seal', 'auditq_queue_seal', ''),
        ('audit_log_queue_rollup', 'auditq_queue_rollup', ''),
        ('audit_log_queue_delivery', 'auditq_queue_delivery', ''),
        ('audit_log_append_only', 'auditq_audit_log_append_only', '')
    LOOP
        IF pg_catalog.to_regprocedure('public.' || v_old || '(' || v_args || ')') IS NULL THEN
            CONTINUE;  -- renamed already
        END IF;
        -- Both: the migrations before this one ran again on a store that had this one (a
        -- store without its version table counts as the base). Their triggers point at the
        -- old function again, and nothing at the new one: the old one takes its place.
        IF pg_catalog.to_regprocedure('public.' || v_new || '(' || v_args || ')') IS NOT NULL THEN
            EXECUTE pg_catalog.format('DROP FUNCTION public.%I(%s)', v_new, v_args);
        END IF;
        EXECUTE pg_catalog.format('ALTER FUNCTION public.%I(%s) RENAME TO %I', v_old, v_args, v_new);
        FOR v_fn IN
            SELECT p.oid FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace
              AND pg_catalog.strpos(p.prosrc, 'public.' || v_old || '(') > 0
        LOOP
            EXECUTE pg_catalog.replace(pg_catalog.pg_get_functiondef(v_fn.oid),
                                       'public.' || v_old || '(', 'public.' || v_new || '(');
        END LOOP;
    END LOOP;
END;
$$;
