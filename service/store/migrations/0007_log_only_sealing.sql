-- Migration 0007: new rows go only into the transparency log. The seal trigger queues a
-- statement's seqs and no longer digests its rows (the v1 checkpoint entries); the sealer
-- appends them to the log and signs no v1 checkpoint. Rows sealed by v1 checkpoints before
-- stay covered by them (`auditq verify` reads both); entries queued before this migration
-- are sealed into the log like any other. The same function as schema.sql's.

-- Queue a statement's rows for the sealer, in the inserting transaction: the seqs it stored.
-- The sealer reads those rows and appends their leaves to the transparency log; nothing is
-- digested here (v1 entries are no longer made for new rows: migration 0007).
CREATE OR REPLACE FUNCTION public.audit_log_queue_seal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_n  bigint;
BEGIN
    SELECT min(a.seq), max(a.seq), count(*) INTO v_lo, v_hi, v_n FROM new_rows a;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO public.seal_pending (kind, seqs)
        VALUES ('row', int8multirange(int8range(v_lo, v_hi, '[]')));
    ELSE
        INSERT INTO public.seal_pending (kind, seqs)
        SELECT 'row', range_agg(int8range(a.seq, a.seq, '[]')) FROM new_rows a;
    END IF;
    RETURN NULL;
END;
$$;
