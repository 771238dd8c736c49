-- 0005: the transparency log (issue 25): the same block as schema.sql's "Transparency log".

-- Transparency log (docs/integrity.md, "The transparency log"): stored rows and store
-- actions as leaves of one RFC 6962 tree, in the order the sealer appended them. The tree
-- begins after the rows the v1 checkpoints sealed. Append-only for every runtime role.
-- A batch: the leaves one seal appended, rows (in seq order) then actions (in id order).
CREATE TABLE IF NOT EXISTS public.tlog_batch (
    first      bigint         PRIMARY KEY,  -- leaf index of its first leaf
    size       integer        NOT NULL CHECK (size > 0),
    row_seqs   int8multirange NOT NULL,
    action_ids int8multirange NOT NULL,
    hashes     bytea          NOT NULL CHECK (length(hashes) = 32 * size)
);
ALTER TABLE public.tlog_batch ALTER COLUMN hashes SET STORAGE EXTERNAL;  -- substr reads a slice
CREATE INDEX IF NOT EXISTS tlog_batch_row_seqs_idx ON public.tlog_batch USING gist (row_seqs);
CREATE INDEX IF NOT EXISTS tlog_batch_action_ids_idx ON public.tlog_batch USING gist (action_ids);
-- Tiles: the hashes of the complete nodes at height 8*level, 256 a tile (C2SP tlog-tiles'
-- shape); a tile still filling is stored again each time it grows (the widest one counts).
CREATE TABLE IF NOT EXISTS public.tlog_tile (
    level  smallint NOT NULL CHECK (level >= 1),
    idx    bigint   NOT NULL,
    width  smallint NOT NULL CHECK (width BETWEEN 1 AND 256),
    hashes bytea    NOT NULL CHECK (length(hashes) = 32 * width),
    PRIMARY KEY (level, idx, width)
);
-- Signed checkpoints (C2SP tlog-checkpoint notes) and the witnesses' cosignatures.
CREATE TABLE IF NOT EXISTS public.tlog_checkpoint (
    size      bigint      PRIMARY KEY,
    note      text        NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.tlog_cosignature (
    size        bigint      NOT NULL,
    witness     text        NOT NULL,
    line        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (size, witness)
);
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tlog_batch', 'tlog_tile', 'tlog_checkpoint', 'tlog_cosignature'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON public.%I FOR EACH ROW '
                       'EXECUTE FUNCTION public.auditq_append_only()', t || '_append_only', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON public.%I', t || '_no_truncate', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION public.auditq_append_only()', t || '_no_truncate', t);
    END LOOP;
END;
$$;
REVOKE ALL ON public.tlog_batch, public.tlog_tile, public.tlog_checkpoint, public.tlog_cosignature
    FROM PUBLIC, auditq_worker, auditq_api;
GRANT SELECT, INSERT ON public.tlog_batch, public.tlog_tile, public.tlog_checkpoint,
    public.tlog_cosignature TO auditq_worker;
GRANT SELECT ON public.tlog_batch, public.tlog_tile, public.tlog_checkpoint,
    public.tlog_cosignature TO auditq_api;
-- Sealing stopped: why (the sealer found the log not extending its last checkpoint), and
-- what each witness last answered. Status only; the API shows the latest.
CREATE TABLE IF NOT EXISTS public.tlog_seal_stop (
    at     timestamptz NOT NULL DEFAULT now(),
    reason text        NOT NULL
);
CREATE TABLE IF NOT EXISTS public.tlog_witness_status (
    at             timestamptz NOT NULL DEFAULT now(),
    url            text        NOT NULL,
    cosigned_size  bigint,
    error          text
);
CREATE INDEX IF NOT EXISTS tlog_witness_status_url_idx ON public.tlog_witness_status (url, at DESC);
REVOKE ALL ON public.tlog_seal_stop, public.tlog_witness_status FROM PUBLIC, auditq_worker, auditq_api;
GRANT SELECT, INSERT ON public.tlog_seal_stop, public.tlog_witness_status TO auditq_worker;
GRANT SELECT ON public.tlog_seal_stop, public.tlog_witness_status TO auditq_api;
-- Erasures in the log: each row an erasure action changed, its leaf hash before and after
-- (the action's leaf names them; a receipt of the row carries the action's leaf).
CREATE TABLE IF NOT EXISTS public.tlog_erasure (
    action_leaf bigint NOT NULL,  -- leaf index of the erasure action
    action_id   bigint NOT NULL,
    leaf_index  bigint NOT NULL,  -- the row's leaf
    seq         bigint NOT NULL,
    before      bytea  NOT NULL,
    after       bytea  NOT NULL,
    PRIMARY KEY (action_leaf, leaf_index)
);
CREATE INDEX IF NOT EXISTS tlog_erasure_leaf_idx ON public.tlog_erasure (leaf_index, action_leaf);
DROP TRIGGER IF EXISTS tlog_erasure_append_only ON public.tlog_erasure;
CREATE TRIGGER tlog_erasure_append_only BEFORE UPDATE OR DELETE ON public.tlog_erasure
    FOR EACH ROW EXECUTE FUNCTION public.auditq_append_only();
DROP TRIGGER IF EXISTS tlog_erasure_no_truncate ON public.tlog_erasure;
CREATE TRIGGER tlog_erasure_no_truncate BEFORE TRUNCATE ON public.tlog_erasure
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_append_only();
REVOKE ALL ON public.tlog_erasure FROM PUBLIC, auditq_worker, auditq_api;
GRANT SELECT, INSERT ON public.tlog_erasure TO auditq_worker;
GRANT SELECT ON public.tlog_erasure TO auditq_api;
-- (end of transparency log)
