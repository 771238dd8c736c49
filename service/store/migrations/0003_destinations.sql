-- 0003: destinations (contract §11, docs/destinations.md): the delivery log of stored rows,
-- the destinations, their secrets and positions. The same block as in schema.sql.

-- =======================================================================================
-- Destinations (docs/destinations.md, contract §11): streaming the record out, at least once,
-- in stored order per destination, from a durable position.
-- A row's `seq` is not commit order (each session takes seqs a thousand at a time, and a
-- transaction may commit after one that took later seqs), so a position over `seq` alone
-- would skip rows that commit late. Each inserting statement therefore leaves one
-- `delivery_log` entry with its transaction id; a destination's position is (xid, seq), and a
-- runner reads only entries below the oldest transaction still running
-- (pg_snapshot_xmin): no entry can ever appear behind a position once it is passed.
-- =======================================================================================
CREATE TABLE IF NOT EXISTS public.delivery_log (
    xid       xid8        NOT NULL,
    seq_lo    bigint      NOT NULL,
    seq_hi    bigint      NOT NULL,
    n         integer     NOT NULL,
    seqs      int8multirange,                    -- NULL: every stored seq in [seq_lo, seq_hi]
    stored_at timestamptz NOT NULL DEFAULT now(),  -- the rows' received_at (transaction time)
    PRIMARY KEY (xid, seq_lo)
);
CREATE INDEX IF NOT EXISTS delivery_log_stored_idx ON public.delivery_log (stored_at);

CREATE OR REPLACE FUNCTION public.audit_log_queue_delivery() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_n  bigint;
BEGIN
    SELECT pg_catalog.min(a.seq), pg_catalog.max(a.seq), pg_catalog.count(*)
        INTO v_lo, v_hi, v_n FROM new_rows a;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO public.delivery_log (xid, seq_lo, seq_hi, n)
        VALUES (pg_catalog.pg_current_xact_id(), v_lo, v_hi, v_n)
        ON CONFLICT (xid, seq_lo) DO NOTHING;
    ELSE
        INSERT INTO public.delivery_log (xid, seq_lo, seq_hi, n, seqs)
        SELECT pg_catalog.pg_current_xact_id(), v_lo, v_hi, v_n,
               pg_catalog.range_agg(pg_catalog.int8range(a.seq, a.seq, '[]'::text))
        FROM new_rows a
        ON CONFLICT (xid, seq_lo) DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS audit_log_queue_delivery ON public.audit_log;
CREATE TRIGGER audit_log_queue_delivery
    AFTER INSERT ON public.audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_log_queue_delivery();

-- Rows stored before this table existed: entries of up to a thousand seqs each, with a
-- transaction id below every real one (xid 1), so they come first in (xid, seq) order. Made
-- once, under the trigger's lock: no insert slips between the two.
INSERT INTO public.delivery_log (xid, seq_lo, seq_hi, n, stored_at)
SELECT '1'::xid8, min(seq), max(seq), count(*), min(received_at)
FROM public.audit_log
WHERE NOT EXISTS (SELECT FROM public.delivery_log)
GROUP BY seq / 1000
ON CONFLICT (xid, seq_lo) DO NOTHING;

-- The destinations themselves: an admin table. `filter` is the query string as given (§7
-- filter names), `filter_json` the same validated; `options` holds what is neither secret nor
-- a column (allow_private, a CA certificate, OCSF class overrides, HEC/Elasticsearch names).
CREATE TABLE IF NOT EXISTS public.destination (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    kind        text        NOT NULL
                CHECK (kind IN ('webhook', 'syslog', 'splunk-hec', 'elasticsearch')),
    url         text        NOT NULL,
    format      text        NOT NULL CHECK (format IN ('json', 'ocsf', 'cef')),
    filter      text        NOT NULL DEFAULT '',
    filter_json jsonb       NOT NULL DEFAULT '{}',
    options     jsonb       NOT NULL DEFAULT '{}',
    paused      boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Secrets apart from everything that is ever shown: no route or command selects this table
-- except to sign or authenticate a delivery.
CREATE TABLE IF NOT EXISTS public.destination_secret (
    destination_id bigint PRIMARY KEY REFERENCES public.destination (id) ON DELETE CASCADE,
    secret         text NOT NULL
);
-- Where each destination stands, and its health. The runner moves the position only from
-- the one it read (compare-and-set), so a backfill is never overwritten by a batch in flight.
CREATE TABLE IF NOT EXISTS public.destination_state (
    destination_id        bigint PRIMARY KEY REFERENCES public.destination (id) ON DELETE CASCADE,
    pos_xid               xid8        NOT NULL,
    pos_seq               bigint      NOT NULL,
    delivered_total       bigint      NOT NULL DEFAULT 0,
    failed_attempts_total bigint      NOT NULL DEFAULT 0,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    last_delivered_at     timestamptz,
    last_error            text,
    last_error_at         timestamptz
);

REVOKE ALL ON public.delivery_log, public.destination, public.destination_secret,
    public.destination_state
    FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION public.audit_log_queue_delivery() FROM PUBLIC;
-- The worker delivers: it reads the destinations (and their secrets, to sign) and moves
-- positions and health; it cannot add, change or remove a destination.
GRANT SELECT ON public.delivery_log, public.destination, public.destination_secret
    TO auditq_worker;
GRANT SELECT, UPDATE ON public.destination_state TO auditq_worker;
-- The API and the admin commands manage destinations; they send the test event themselves.
GRANT SELECT ON public.delivery_log TO auditq_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.destination, public.destination_secret,
    public.destination_state
    TO auditq_api;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO auditq_api',
                   pg_get_serial_sequence('public.destination', 'id'));
END;
$$;
-- (end of destinations)
