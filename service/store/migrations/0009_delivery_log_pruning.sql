-- 0009: the delivery log is pruned: the same block as schema.sql's "Pruning the delivery
-- log" (after the "Destinations" block).

-- Pruning the delivery log (the maintenance job): an entry goes once every destination has
-- passed it AND its rows are gone (past retention). An entry whose rows are still stored
-- stays though every destination passed it: a backfill (a new destination's `--since`, or
-- `destinations backfill`) finds history only through its entries. Oldest first, stopping at
-- the first entry that stays (retention removes the oldest rows first), so a call with
-- nothing to prune reads one entry; at most p_limit entries a call.
CREATE OR REPLACE FUNCTION public.auditq_prune_delivery_log(p_limit integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_entry  record;
    v_pruned bigint := 0;
BEGIN
    FOR v_entry IN
        SELECT d.xid, d.seq_lo, d.seq_hi FROM public.delivery_log d
        ORDER BY d.xid, d.seq_lo
        LIMIT p_limit
    LOOP
        EXIT WHEN EXISTS (
            SELECT FROM public.destination_state s
            WHERE (s.pos_xid, s.pos_seq) < (v_entry.xid, v_entry.seq_hi));
        EXIT WHEN EXISTS (
            SELECT FROM public.audit_log a
            WHERE a.seq BETWEEN v_entry.seq_lo AND v_entry.seq_hi);
        DELETE FROM public.delivery_log WHERE xid = v_entry.xid AND seq_lo = v_entry.seq_lo;
        v_pruned := v_pruned + 1;
    END LOOP;
    RETURN v_pruned;
END;
$$;
REVOKE ALL ON FUNCTION public.auditq_prune_delivery_log(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.auditq_prune_delivery_log(integer) TO auditq_worker;
-- (end of delivery log pruning)
