-- auditq storage. Idempotent: apply it as often as you like (`auditq migrate`).
-- PostgreSQL >= 14.

-- CACHE: each session takes seqs a thousand at a time, so one statement's rows are
-- (nearly always) one contiguous range, which the seal trigger records cheaply.
CREATE SEQUENCE IF NOT EXISTS audit_log_seq CACHE 1000;

CREATE TABLE IF NOT EXISTS audit_log (
    id           uuid        NOT NULL,
    ts           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    action       text        NOT NULL,
    category     text        NOT NULL,
    severity     text        NOT NULL,
    outcome      text        NOT NULL,
    actor_id     text,
    actor_type   text,
    actor_name   text,
    actor_email  text,
    entity_type  text,
    entity_id    text,
    entity_name  text,
    tenant       text,
    request_id   text,
    ip           inet,
    user_agent   text,
    method       text,
    path         text,
    status       integer,
    duration_ms  double precision,
    changes      jsonb,
    metadata     jsonb,
    presentation jsonb       NOT NULL,
    source       text,
    -- Who delivered the row (contract §5 Provenance): set by auditq, never by the producer.
    received_via text,
    -- Position in the seal queue (docs/integrity.md); only its default fills it.
    seq          bigint      NOT NULL DEFAULT nextval('audit_log_seq'),
    -- Full text over names, metadata and changes; STORED so it can be indexed (PostgreSQL 18).
    search       tsvector GENERATED ALWAYS AS (
        to_tsvector('simple',
            coalesce(action, '') || ' ' || coalesce(actor_name, '') || ' ' ||
            coalesce(entity_name, '') || ' ' || coalesce(metadata::text, '') || ' ' ||
            coalesce(changes::text, ''))
    ) STORED,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

-- Rows outside every monthly partition (far past or future) land here instead of failing.
CREATE TABLE IF NOT EXISTS audit_log_default PARTITION OF audit_log DEFAULT;

CREATE INDEX IF NOT EXISTS audit_log_entity_idx ON audit_log (entity_type, entity_id, ts DESC);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_id, ts DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, ts DESC);
CREATE INDEX IF NOT EXISTS audit_log_request_idx ON audit_log (request_id);
CREATE INDEX IF NOT EXISTS audit_log_tenant_idx ON audit_log (tenant, ts DESC);
CREATE INDEX IF NOT EXISTS audit_log_ts_idx ON audit_log (ts DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_search_idx ON audit_log USING gin (search);
-- The live tail (SSE) reads rows in arrival order, which is not `ts` order for late events.
CREATE INDEX IF NOT EXISTS audit_log_received_idx ON audit_log (received_at, id);

-- Stores made before these columns existed get them (rows before this have seq from the
-- rewrite, in physical order).
ALTER TABLE audit_log
    ADD COLUMN IF NOT EXISTS received_via text,
    ADD COLUMN IF NOT EXISTS seq bigint NOT NULL DEFAULT nextval('audit_log_seq');
ALTER SEQUENCE audit_log_seq OWNED BY audit_log.seq CACHE 1000;
CREATE INDEX IF NOT EXISTS audit_log_seq_idx ON audit_log (seq);

-- ---------------------------------------------------------------------------------------
-- Integrity (docs/integrity.md): the seal queue, checkpoints, and what the definer
-- functions did. Every SECURITY DEFINER function sets `search_path = public, pg_temp`:
-- pg_catalog is searched first implicitly, and a caller's temporary objects last, so no
-- caller can put its own table or function in the way.

-- One entry per inserting statement: the seqs it stored and their checkpoint entries
-- (seq || id || digest, sorted), committed with them. The sealer deletes the entries it can
-- see (committed ones), so no row is skipped or sealed twice, and never reads the rows.
CREATE TABLE IF NOT EXISTS seal_pending (
    kind      text           NOT NULL CHECK (kind IN ('row', 'action')),
    seqs      int8multirange NOT NULL,
    queued_at timestamptz    NOT NULL DEFAULT now()
);
ALTER TABLE seal_pending ADD COLUMN IF NOT EXISTS entries bytea;
ALTER TABLE seal_pending ALTER COLUMN entries SET STORAGE EXTERNAL;

-- Signed, chained checkpoints; `rows`/`actions` hold 40-byte entries sorted by seq.
CREATE TABLE IF NOT EXISTS seal_checkpoint (
    n            bigint      PRIMARY KEY CHECK (n > 0),
    sealed_at    timestamptz NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    row_count    bigint      NOT NULL,
    seq_min      bigint,
    seq_max      bigint,
    rows         bytea       NOT NULL,
    action_count bigint      NOT NULL,
    actions      bytea       NOT NULL,
    key_id       bytea       NOT NULL,
    signature    bytea       NOT NULL
);
CREATE INDEX IF NOT EXISTS seal_checkpoint_sealed_idx ON seal_checkpoint (sealed_at);
-- Entries are digests: not worth trying to compress.
ALTER TABLE seal_checkpoint ALTER COLUMN rows SET STORAGE EXTERNAL,
                            ALTER COLUMN actions SET STORAGE EXTERNAL;

-- What the SECURITY DEFINER functions did (partition made or dropped, subject anonymised).
CREATE SEQUENCE IF NOT EXISTS store_action_seq;
CREATE TABLE IF NOT EXISTS store_action (
    id     bigint         PRIMARY KEY DEFAULT nextval('store_action_seq'),
    at     timestamptz    NOT NULL DEFAULT now(),
    action text           NOT NULL,
    actor  text           NOT NULL DEFAULT session_user,
    detail jsonb          NOT NULL,
    seqs   int8multirange            -- rows it removed (retention)
);
ALTER SEQUENCE store_action_seq OWNED BY store_action.id;

-- Erasure (issue 13): each row changed in place, with its digest before and after.
CREATE TABLE IF NOT EXISTS row_replacement (
    action_id  bigint NOT NULL REFERENCES store_action (id),
    seq        bigint NOT NULL,
    old_digest bytea  NOT NULL,
    new_digest bytea  NOT NULL,
    PRIMARY KEY (action_id, seq)
);
CREATE INDEX IF NOT EXISTS row_replacement_seq_idx ON row_replacement (seq);

-- Results of `POST /api/v1/admin/integrity/verify` and `auditq verify` runs.
CREATE TABLE IF NOT EXISTS integrity_verification (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result      jsonb
);

-- The row digest of docs/integrity.md, canonical form version 1: SHA-256 (first 16 bytes) of
-- PostgreSQL's binary form of the row of these columns. `auditq verify` reads the same record
-- through COPY and hashes it itself (service/integrity/canonical.py); a test keeps the two
-- identical. The anonymisation function records digests with it.
CREATE OR REPLACE FUNCTION audit_row_digest(r audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = public, pg_temp AS $$
SELECT substr(sha256(record_send(ROW(
    r.seq, r.id, r.ts, r.received_at, r.action, r.category, r.severity, r.outcome,
    r.actor_id, r.actor_type, r.actor_name, r.actor_email,
    r.entity_type, r.entity_id, r.entity_name, r.tenant,
    r.request_id, r.ip, r.user_agent, r.method, r.path, r.status, r.duration_ms,
    r.changes, r.metadata, r.presentation, r.source, r.received_via))), 1, 16)
$$;

-- Queue a statement's rows for the sealer, in the inserting transaction: their seqs and
-- their entries, digested here from the rows in hand (the same record as audit_row_digest).
-- The entries are in no particular order: the sealer sorts a checkpoint's entries anyway.
CREATE OR REPLACE FUNCTION audit_log_queue_seal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_lo      bigint;
    v_hi      bigint;
    v_n       bigint;
    v_entries bytea;
BEGIN
    SELECT min(a.seq), max(a.seq), count(*),
           string_agg(int8send(a.seq) || uuid_send(a.id) || substr(sha256(record_send(ROW(
               a.seq, a.id, a.ts, a.received_at, a.action, a.category, a.severity, a.outcome,
               a.actor_id, a.actor_type, a.actor_name, a.actor_email,
               a.entity_type, a.entity_id, a.entity_name, a.tenant,
               a.request_id, a.ip, a.user_agent, a.method, a.path, a.status, a.duration_ms,
               a.changes, a.metadata, a.presentation, a.source, a.received_via))), 1, 16),
               ''::bytea)
      INTO v_lo, v_hi, v_n, v_entries
      FROM new_rows a;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO seal_pending (kind, seqs, entries)
        VALUES ('row', int8multirange(int8range(v_lo, v_hi, '[]')), v_entries);
    ELSE
        INSERT INTO seal_pending (kind, seqs, entries)
        SELECT 'row', range_agg(int8range(seq, seq, '[]')), v_entries FROM new_rows;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS audit_log_queue_seal ON audit_log;
CREATE TRIGGER audit_log_queue_seal
    AFTER INSERT ON audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_queue_seal();

-- Append-only, no escape: an UPDATE passes only inside the anonymisation function (issue 13),
-- which runs as the table's owner and sets `auditq.erasing` to its store_action id. A runtime
-- role setting the flag is not the owner and is refused like any other.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND coalesce(current_setting('auditq.erasing', true), '') ~ '^[0-9]+$'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                           WHERE oid = 'audit_log'::regclass) THEN
        RETURN NEW;
    END IF;
    -- Retention of the default partition's old rows (auditq_delete_expired_default_rows):
    -- only inside that function, which runs as the owner and sets the flag.
    IF TG_OP = 'DELETE'
       AND coalesce(current_setting('auditq.retention', true), '') = 'on'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                           WHERE oid = 'audit_log'::regclass) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'rows leave only through retention and change only through anonymisation';
END;
$$;

DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Checkpoints and the record of admin actions are append-only too (for everyone but a
-- superuser skipping triggers, which verify then catches).
CREATE OR REPLACE FUNCTION auditq_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seal_checkpoint', 'store_action', 'row_replacement'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION auditq_append_only()', t || '_append_only', t);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_no_truncate', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION auditq_append_only()', t || '_no_truncate', t);
    END LOOP;
END;
$$;

-- Record an admin action and queue it for the next checkpoint (definer functions only).
CREATE OR REPLACE FUNCTION auditq_record_action(
    p_action text, p_detail jsonb, p_seqs int8multirange DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO store_action (action, detail, seqs) VALUES (p_action, p_detail, p_seqs)
    RETURNING id INTO v_id;
    INSERT INTO seal_pending (kind, seqs) VALUES ('action', int8multirange(int8range(v_id, v_id, '[]')));
    RETURN v_id;
END;
$$;

-- Make the monthly partition starting at p_month unless it exists; true when made.
CREATE OR REPLACE FUNCTION auditq_ensure_partition(p_month date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_name text := 'audit_log_y' || to_char(p_month, 'YYYY') || 'm' || to_char(p_month, 'MM');
    v_end  date := (p_month + interval '1 month')::date;
BEGIN
    IF p_month IS NULL OR p_month <> date_trunc('month', p_month)::date THEN
        RAISE EXCEPTION 'a partition starts on the first of a month, not %', p_month
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One maker at a time: two workers starting on a new month would both find no partition
    -- and one would fail on the other's (held to the end of the caller's transaction).
    PERFORM pg_advisory_xact_lock(1635083369, 1);  -- 'audi', partitions
    IF to_regclass(v_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                   v_name, p_month, v_end);
    PERFORM auditq_record_action('partition.created', jsonb_build_object(
        'partition', v_name, 'from', p_month, 'to', v_end));
    RETURN true;
END;
$$;

-- Retention: drop one monthly partition wholly older than p_retention_days, recording
-- what verify needs to say so (rows, their seqs, whether all were sealed, final digest).
CREATE OR REPLACE FUNCTION auditq_drop_partition(p_name text, p_retention_days integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_match  text[] := regexp_match(p_name, '^audit_log_y(\d{4})m(\d{2})$');
    v_from   date;
    v_to     date;
    v_rows   bigint;
    v_seqs   int8multirange;
    v_digest bytea;
    v_sealed boolean;
BEGIN
    IF v_match IS NULL OR p_retention_days IS NULL OR p_retention_days < 1 THEN
        RAISE EXCEPTION 'not a monthly partition of audit_log or no retention: %, %',
            p_name, p_retention_days USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_from := make_date(v_match[1]::int, v_match[2]::int, 1);
    v_to := (v_from + interval '1 month')::date;
    IF v_to > (now() - make_interval(days => p_retention_days))::date THEN
        RAISE EXCEPTION 'partition % is not wholly past % days of retention',
            p_name, p_retention_days USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhparent = 'audit_log'::regclass
                   AND inhrelid = to_regclass(p_name)) THEN
        RAISE EXCEPTION 'no partition %', p_name USING ERRCODE = 'undefined_table';
    END IF;
    -- The rollup loses the rows with them (taken first: the fold reads every partition).
    PERFORM pg_advisory_xact_lock(1919904876);  -- 'roll': the rollup lock
    SELECT count(*), coalesce(range_agg(int8range(a.seq, a.seq, '[]')), '{}'),
           sha256(coalesce(string_agg(int8send(a.seq) || uuid_send(a.id) || audit_row_digest(a),
                                      ''::bytea ORDER BY a.seq), ''::bytea))
      INTO v_rows, v_seqs, v_digest
      FROM audit_log a WHERE a.ts >= v_from AND a.ts < v_to;
    SELECT NOT EXISTS (SELECT FROM seal_pending p WHERE p.kind = 'row' AND p.seqs && v_seqs)
      INTO v_sealed;
    PERFORM auditq_rollup_rows(v_seqs, -1);
    EXECUTE format('DROP TABLE %I', p_name);
    RETURN auditq_record_action('partition.dropped', jsonb_build_object(
        'partition', p_name, 'from', v_from, 'to', v_to, 'rows', v_rows, 'sealed', v_sealed,
        'digest', encode(v_digest, 'hex'), 'retention_days', p_retention_days), v_seqs);
END;
$$;

-- Retention of rows in the default partition (months that had no partition of their own,
-- e.g. far-past events): deleted when wholly past p_retention_days, recorded like a dropped
-- partition (rows, their seqs, whether all were sealed, final digest) for `auditq verify`.
CREATE OR REPLACE FUNCTION auditq_delete_expired_default_rows(p_retention_days integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_before timestamptz;
    v_rows   bigint;
    v_seqs   int8multirange;
    v_digest bytea;
    v_sealed boolean;
BEGIN
    IF p_retention_days IS NULL OR p_retention_days < 1 THEN
        RAISE EXCEPTION 'no retention: %', p_retention_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_before := now() - make_interval(days => p_retention_days);
    PERFORM pg_advisory_xact_lock(1919904876);  -- 'roll': the rollup loses the rows with them
    SELECT count(*), coalesce(range_agg(int8range(a.seq, a.seq, '[]')), '{}'),
           sha256(coalesce(string_agg(int8send(a.seq) || uuid_send(a.id) || audit_row_digest(a),
                                      ''::bytea ORDER BY a.seq), ''::bytea))
      INTO v_rows, v_seqs, v_digest
      FROM audit_log_default a WHERE a.ts < v_before;
    IF v_rows = 0 THEN
        RETURN NULL;
    END IF;
    SELECT NOT EXISTS (SELECT FROM seal_pending p WHERE p.kind = 'row' AND p.seqs && v_seqs)
      INTO v_sealed;
    PERFORM auditq_rollup_rows(v_seqs, -1);
    PERFORM set_config('auditq.retention', 'on', true);
    DELETE FROM audit_log_default WHERE ts < v_before;
    PERFORM set_config('auditq.retention', '', true);
    RETURN auditq_record_action('retention.rows_deleted', jsonb_build_object(
        'partition', 'audit_log_default', 'before', v_before, 'rows', v_rows,
        'sealed', v_sealed, 'digest', encode(v_digest, 'hex'),
        'retention_days', p_retention_days), v_seqs);
END;
$$;

-- ---------------------------------------------------------------------------------------
-- Statistics rollup (docs/scaling.md, "Statistics"): counts per UTC day of the stored rows,
-- so the statistics route sums a few thousand rollup rows instead of every row of its window.
-- Exact under any snapshot: every change of the rows and of the rollup commits together.
-- A stored row is either still queued in rollup_pending (the API counts it from the row) or
-- folded into the three tables below, never both; retention and erasure take the rows they
-- remove or change out of the rollup in their own transaction, under the rollup lock.

-- One entry per inserting statement: the seqs it stored, committed with them (as seal_pending).
CREATE TABLE IF NOT EXISTS rollup_pending (
    seqs int8multirange NOT NULL
);
-- Counts by day and what every window sums: action, severity, outcome (all rows).
CREATE TABLE IF NOT EXISTS rollup_day (
    day      date   NOT NULL,
    action   text   NOT NULL,
    severity text   NOT NULL,
    outcome  text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (day, action, severity, outcome)
);
-- The same for each tenant (rows that have one).
CREATE TABLE IF NOT EXISTS rollup_day_tenant (
    tenant   text   NOT NULL,
    day      date   NOT NULL,
    action   text   NOT NULL,
    severity text   NOT NULL,
    outcome  text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (tenant, day, action, severity, outcome)
);
-- Counts by day and actor (rows that have one), over all tenants: a tenant's top actors are
-- counted from its rows (tenant index), as actors by tenant and day barely compress.
CREATE TABLE IF NOT EXISTS rollup_day_actor (
    day      date   NOT NULL,
    actor_id text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (day, actor_id)
);

-- Queue a statement's rows for the fold, in the inserting transaction.
CREATE OR REPLACE FUNCTION audit_log_queue_rollup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_n  bigint;
BEGIN
    SELECT min(seq), max(seq), count(*) INTO v_lo, v_hi, v_n FROM new_rows;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO rollup_pending (seqs) VALUES (int8multirange(int8range(v_lo, v_hi, '[]')));
    ELSE
        INSERT INTO rollup_pending (seqs) SELECT range_agg(int8range(seq, seq, '[]')) FROM new_rows;
    END IF;
    RETURN NULL;
END;
$$;

-- Stores made before the rollup: their rows are queued once, with the writers held off
-- meanwhile (SHARE waits for the inserts in flight), so no row is queued twice or missed.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass
                   AND tgname = 'audit_log_queue_rollup') THEN
        LOCK TABLE audit_log IN SHARE MODE;
        INSERT INTO rollup_pending (seqs)
        SELECT range_agg(int8range(seq, seq, '[]')) FROM audit_log GROUP BY seq / 1000;
    END IF;
END;
$$;

DROP TRIGGER IF EXISTS audit_log_queue_rollup ON audit_log;
CREATE TRIGGER audit_log_queue_rollup
    AFTER INSERT ON audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_queue_rollup();

-- Count the rows of p_seqs that are folded (not pending), as they are now, into the rollup
-- (p_sign 1) or out of it (-1); keys left at 0 are deleted, so an erased actor id leaves the
-- rollup with its last row. One pass over the rows, a grouping set per table (GROUPING()
-- tells them apart). Callers hold the rollup lock.
CREATE OR REPLACE FUNCTION auditq_rollup_rows(p_seqs int8multirange, p_sign integer)
RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    v_seqs   int8multirange := p_seqs - (SELECT coalesce(range_agg(seqs), '{}') FROM rollup_pending);
    v_day    tid[];
    v_tenant tid[];
    v_actor  tid[];
BEGIN
    WITH counted AS MATERIALIZED (
        SELECT GROUPING(a.tenant, a.actor_id, a.action) AS kind, a.day, a.tenant, a.actor_id,
               a.action, a.severity, a.outcome, count(*) * p_sign AS n
        FROM unnest(v_seqs) AS r, LATERAL (  -- OFFSET 0: by the seq index, always
            SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant, actor_id, action, severity, outcome
            FROM audit_log WHERE seq >= lower(r) AND seq < upper(r) OFFSET 0) AS a
        GROUP BY GROUPING SETS ((a.day, a.action, a.severity, a.outcome),
                                (a.tenant, a.day, a.action, a.severity, a.outcome),
                                (a.day, a.actor_id))
    ), by_day AS (
        INSERT INTO rollup_day AS r (day, action, severity, outcome, n)
        SELECT day, action, severity, outcome, n FROM counted WHERE kind = 6
        ON CONFLICT (day, action, severity, outcome) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    ), by_tenant AS (
        INSERT INTO rollup_day_tenant AS r (tenant, day, action, severity, outcome, n)
        SELECT tenant, day, action, severity, outcome, n FROM counted
        WHERE kind = 2 AND tenant IS NOT NULL
        ON CONFLICT (tenant, day, action, severity, outcome) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    ), by_actor AS (
        INSERT INTO rollup_day_actor AS r (day, actor_id, n)
        SELECT day, actor_id, n FROM counted WHERE kind = 5 AND actor_id IS NOT NULL
        ON CONFLICT (day, actor_id) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    )
    SELECT (SELECT array_agg(ctid) FROM by_day WHERE n = 0),
           (SELECT array_agg(ctid) FROM by_tenant WHERE n = 0),
           (SELECT array_agg(ctid) FROM by_actor WHERE n = 0)
      INTO v_day, v_tenant, v_actor;
    -- The keys counted down to 0 (their rows are gone, or changed to other keys).
    DELETE FROM rollup_day WHERE ctid = ANY(v_day);
    DELETE FROM rollup_day_tenant WHERE ctid = ANY(v_tenant);
    DELETE FROM rollup_day_actor WHERE ctid = ANY(v_actor);
END;
$$;

-- The worker's fold: up to p_limit pending entries (committed statements only: an open one's
-- entry is invisible and waits, like its rows) into the rollup, in one transaction. Returns
-- the entries folded, or null when another fold (or retention, or erasure) holds the lock.
CREATE OR REPLACE FUNCTION auditq_rollup_fold(p_limit integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_entries bigint;
    v_seqs    int8multirange;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'auditq_rollup_fold: a limit of at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock(1919904876) THEN  -- 'roll': the rollup lock
        RETURN NULL;
    END IF;
    WITH taken AS (
        DELETE FROM rollup_pending
        WHERE ctid = ANY(ARRAY(SELECT ctid FROM rollup_pending LIMIT p_limit))
        RETURNING seqs
    )
    SELECT count(*), range_agg(seqs) INTO v_entries, v_seqs FROM taken;
    IF v_entries > 0 THEN
        PERFORM auditq_rollup_rows(v_seqs, 1);
    END IF;
    RETURN v_entries;
END;
$$;

-- API tokens: only a SHA-256 of each token is stored; the token itself is shown once.
CREATE TABLE IF NOT EXISTS api_token (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('reader', 'admin', 'ingest')),
    token_hash  bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS api_token_name_active_idx ON api_token (name) WHERE revoked_at IS NULL;

-- Secrets the API derives keys from (the HMAC key of pagination cursors): made once per
-- database, so every API replica, before and after a restart, signs and checks alike.
CREATE TABLE IF NOT EXISTS api_secret (
    name       text        PRIMARY KEY,
    secret     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- gen_random_uuid() draws from the server's strong random source: 2 x 122 random bits.
INSERT INTO api_secret (name, secret)
VALUES ('cursor', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
       -- The key of provenance tags (service/queue.py): the API vouches for http:<token>
       -- and api jobs with it, the worker checks them.
       ('provenance', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
ON CONFLICT (name) DO NOTHING;

-- ---------------------------------------------------------------------------------------
-- Runtime roles (docs/integrity.md): the worker and the API connect as these, never as the
-- owner. Neither owns anything, so neither can alter, drop, detach or disable anything.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['auditq_worker', 'auditq_api'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', v_role);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and % may not create it', v_role, current_user
                    USING HINT = 'a DBA creates auditq_worker and auditq_api (docs/integrity.md)';
            END;
        END IF;
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = v_role AND (rolsuper OR rolbypassrls)) THEN
            RAISE WARNING 'role % is a superuser: the append-only rule does not hold against it',
                v_role;
        END IF;
    END LOOP;
    -- PostgreSQL 14 lets every role create objects in public; nothing of auditq needs that.
    BEGIN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;  -- not the schema's owner: the DBA decides
    END;
END;
$$;

REVOKE ALL ON audit_log, seal_pending, seal_checkpoint, store_action, row_replacement,
    integrity_verification, api_token, api_secret,
    rollup_pending, rollup_day, rollup_day_tenant, rollup_day_actor
    FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON SEQUENCE audit_log_seq, store_action_seq FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION auditq_ensure_partition(date), auditq_drop_partition(text, integer),
    auditq_delete_expired_default_rows(integer),
    auditq_record_action(text, jsonb, int8multirange), audit_log_queue_seal(),
    audit_log_queue_rollup(), auditq_rollup_fold(integer),
    auditq_rollup_rows(int8multirange, integer)
    FROM PUBLIC;

-- The worker: store rows (never choosing their seq), seal them, keep partitions.
GRANT SELECT ON audit_log TO auditq_worker;
GRANT INSERT (id, ts, received_at, action, category, severity, outcome,
              actor_id, actor_type, actor_name, actor_email,
              entity_type, entity_id, entity_name, tenant,
              request_id, ip, user_agent, method, path, status, duration_ms,
              changes, metadata, presentation, source, received_via)
    ON audit_log TO auditq_worker;
GRANT USAGE ON SEQUENCE audit_log_seq TO auditq_worker;
GRANT SELECT, DELETE ON seal_pending TO auditq_worker;
GRANT SELECT, INSERT ON seal_checkpoint TO auditq_worker;
GRANT SELECT ON store_action, row_replacement TO auditq_worker;
-- The provenance key: the worker checks the API's tags with it (service/queue.py).
GRANT SELECT ON api_secret TO auditq_worker;
GRANT EXECUTE ON FUNCTION auditq_ensure_partition(date), auditq_drop_partition(text, integer),
    auditq_delete_expired_default_rows(integer) TO auditq_worker;
-- The statistics rollup: the worker folds through the definer function only; it may not
-- write the counts themselves.
GRANT EXECUTE ON FUNCTION auditq_rollup_fold(integer) TO auditq_worker;

-- The API and the admin commands: read everything, manage tokens, record verifications.
GRANT SELECT ON audit_log, seal_pending, seal_checkpoint, store_action, row_replacement,
    api_secret, rollup_pending, rollup_day, rollup_day_tenant, rollup_day_actor TO auditq_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON api_token TO auditq_api;
GRANT SELECT, INSERT ON integrity_verification TO auditq_api;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, %s TO auditq_api',
                   pg_get_serial_sequence('api_token', 'id'),
                   pg_get_serial_sequence('integrity_verification', 'id'));
END;
$$;

-- =======================================================================================
-- Erasure (docs/erasure.md): forgetting one data subject without breaking the proof.
-- One subject is pseudonymised by auditq_anonymise_rows(), batch by batch; each batch is a
-- sealed `store_action` with a `row_replacement` per changed row (docs/integrity.md,
-- "Erasure"), so `auditq verify` still passes and names the action.
-- =======================================================================================

-- The key of the pseudonyms: HMAC-SHA256(key, subject id). Made once per database, like the
-- cursor secret; the worker reads it (and nothing else of api_secret) through the view.
INSERT INTO api_secret (name, secret)
VALUES ('subject', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
ON CONFLICT (name) DO NOTHING;
CREATE OR REPLACE VIEW subject_key AS SELECT secret FROM api_secret WHERE name = 'subject';

-- Erased subjects, by pseudonym only (never the id): the worker pseudonymises their later
-- events; the API reports the state of each erasure.
CREATE TABLE IF NOT EXISTS erased_subject (
    pseudonym    text        PRIMARY KEY,
    state        text        NOT NULL CHECK (state IN ('running', 'done')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    rows         bigint      NOT NULL DEFAULT 0,
    dead_letters bigint      NOT NULL DEFAULT 0
);

-- Presentation params are outside the `search` column: this index finds a subject's name
-- there too. Partial: the common event without params costs nothing.
CREATE INDEX IF NOT EXISTS audit_log_params_search_idx ON audit_log
    USING gin (to_tsvector('simple', (presentation -> 'params')::text))
    WHERE presentation -> 'params' <> '{}'::jsonb;

-- A regular expression matching any of p_values literally, not inside a longer word.
CREATE OR REPLACE FUNCTION auditq_erase_pattern(p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = public, pg_temp AS $$
SELECT '(?<![[:alnum:]])(' || string_agg(regexp_replace(v, '([^[:alnum:][:space:]])', '\\\1', 'g'),
                                       '|' ORDER BY length(v) DESC, v)
       || ')(?![[:alnum:]])'
FROM unnest(p_values) AS v WHERE length(v) > 0
$$;

-- Text cleared of the subject: names/emails (p_names, any case) -> [erased], id -> pseudonym.
CREATE OR REPLACE FUNCTION auditq_erase_text(t text, p_names text, p_id text, p_pseudonym text)
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = public, pg_temp AS $$
SELECT CASE WHEN p_id IS NULL THEN x ELSE regexp_replace(x, p_id, p_pseudonym, 'g') END
FROM (SELECT CASE WHEN p_names IS NULL OR t IS NULL THEN t
                  ELSE regexp_replace(t, p_names, '[erased]', 'gi') END AS x) s
$$;

-- The same over every key and string of a JSON value, at any depth.
CREATE OR REPLACE FUNCTION auditq_erase_jsonb(j jsonb, p_names text, p_id text, p_pseudonym text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = public, pg_temp AS $$
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'object' THEN
            RETURN coalesce((SELECT jsonb_object_agg(auditq_erase_text(k, p_names, p_id, p_pseudonym),
                                                     auditq_erase_jsonb(v, p_names, p_id, p_pseudonym))
                             FROM jsonb_each(j) AS e(k, v)), '{}'::jsonb);
        WHEN 'array' THEN
            RETURN coalesce((SELECT jsonb_agg(auditq_erase_jsonb(v, p_names, p_id, p_pseudonym) ORDER BY o)
                             FROM jsonb_array_elements(j) WITH ORDINALITY AS e(v, o)), '[]'::jsonb);
        WHEN 'string' THEN
            RETURN to_jsonb(auditq_erase_text(j #>> '{}', p_names, p_id, p_pseudonym));
        ELSE
            RETURN j;
    END CASE;
END;
$$;

-- One batch of an erasure, in the caller's transaction; returns the rows changed, the last
-- seq looked at and the store_action recording the batch (null when nothing matched). p_mentions false: the subject's own rows (actor, or entity of a type in
-- p_entity_types): ids -> pseudonym; names, emails, client IP, user agent removed; texts
-- cleared. p_mentions true: other rows whose texts (full-text search) hold one of p_values,
-- in seq order after p_after: entity name, path, metadata, changes, presentation cleared.
CREATE OR REPLACE FUNCTION auditq_anonymise_rows(
    p_subject text, p_pseudonym text, p_entity_types text[], p_values text[],
    p_mentions boolean, p_after bigint, p_limit integer
) RETURNS TABLE (changed bigint, last_seq bigint, action_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_names  text := auditq_erase_pattern(array_remove(p_values, p_subject));
    v_id     text := auditq_erase_pattern(ARRAY[p_subject]);
    -- Any value, as it is or as JSON text escapes it, anywhere: may this text hold one?
    v_any    text := (SELECT string_agg(regexp_replace(x, '([^[:alnum:][:space:]])', '\\\1', 'g'), '|')
                      FROM (SELECT v AS x FROM unnest(p_values) v WHERE length(v) > 0
                            UNION SELECT substr(to_json(v)::text, 2, length(to_json(v)::text) - 2)
                            FROM unnest(p_values) v WHERE length(v) > 0) s);
    v_query  tsquery;
    v_part   tsquery;
    v_value  text;
    v_seqs   bigint[];
    v_old    bytea[];
    v_action bigint;
    v_count  bigint;
    v_range  int8multirange;
BEGIN
    IF coalesce(p_subject, '') = '' OR coalesce(p_pseudonym, '') !~ '^anon_[0-9a-f]{32}$'
       OR p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'auditq_anonymise_rows: a subject, a pseudonym and a batch of 1 to 100000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One erasure batch at a time: two subjects' batches never replace the same row at once.
    PERFORM pg_advisory_xact_lock(1635083621);  -- "anon"
    -- The subject's own rows change an actor id the rollup counts (the mentions pass changes
    -- nothing it counts): the rollup moves their counts to the pseudonym in this transaction.
    IF NOT p_mentions THEN
        PERFORM pg_advisory_xact_lock(1919904876);  -- 'roll': the rollup lock
    END IF;
    IF p_mentions THEN
        FOREACH v_value IN ARRAY coalesce(p_values, '{}') LOOP
            v_part := phraseto_tsquery('simple', v_value);
            IF numnode(v_part) > 0 THEN
                v_query := CASE WHEN v_query IS NULL THEN v_part ELSE v_query || v_part END;
            END IF;
        END LOOP;
        IF v_query IS NULL THEN
            RETURN QUERY SELECT 0::bigint, p_after, NULL::bigint;
            RETURN;
        END IF;
        SELECT array_agg(s.seq ORDER BY s.seq), array_agg(s.d ORDER BY s.seq) INTO v_seqs, v_old
        FROM (SELECT a.seq, audit_row_digest(a) AS d FROM audit_log a
              WHERE (a.search @@ v_query
                     OR (a.presentation -> 'params' <> '{}'::jsonb
                         AND to_tsvector('simple', (a.presentation -> 'params')::text) @@ v_query))
                AND a.seq > coalesce(p_after, 0)
                AND NOT coalesce(a.actor_id = p_subject, false)
                AND NOT coalesce(a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types), false)
              ORDER BY a.seq LIMIT p_limit) s;
    ELSE
        SELECT array_agg(s.seq ORDER BY s.seq), array_agg(s.d ORDER BY s.seq) INTO v_seqs, v_old
        -- In index order (actor, or entity, then ts): the walk never scans the table, and the
        -- rows already changed no longer match, so each batch starts where the last ended.
        FROM ((SELECT a.seq, audit_row_digest(a) AS d FROM audit_log a
               WHERE a.actor_id = p_subject ORDER BY a.ts DESC LIMIT p_limit)
              UNION
              (SELECT a.seq, audit_row_digest(a) AS d FROM audit_log a
               WHERE a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types)
               ORDER BY a.ts DESC LIMIT p_limit)
              LIMIT p_limit) s;
    END IF;
    IF v_seqs IS NULL THEN
        RETURN QUERY SELECT 0::bigint, p_after, NULL::bigint;
        RETURN;
    END IF;
    IF NOT p_mentions THEN
        v_range := (SELECT range_agg(int8range(x, x, '[]')) FROM unnest(v_seqs) AS x);
        PERFORM auditq_rollup_rows(v_range, -1);
    END IF;
    v_action := auditq_record_action('subject.anonymised', jsonb_build_object(
        'pseudonym', p_pseudonym, 'part', CASE WHEN p_mentions THEN 'mentions' ELSE 'subject' END));
    PERFORM set_config('auditq.erasing', v_action::text, true);
    -- SET sees the row before the change; a text is walked only if it may hold a value.
    WITH changed_rows AS (
        UPDATE audit_log a SET
            actor_id     = CASE WHEN a.actor_id = p_subject THEN p_pseudonym ELSE a.actor_id END,
            actor_name   = CASE WHEN a.actor_id = p_subject THEN NULL ELSE a.actor_name END,
            actor_email  = CASE WHEN a.actor_id = p_subject THEN NULL ELSE a.actor_email END,
            entity_id    = CASE WHEN a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types)
                                THEN p_pseudonym ELSE a.entity_id END,
            entity_name  = CASE WHEN a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types)
                                THEN NULL
                                ELSE auditq_erase_text(a.entity_name, v_names, v_id, p_pseudonym) END,
            ip           = CASE WHEN a.actor_id = p_subject
                                  OR (a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types))
                                THEN NULL ELSE a.ip END,
            user_agent   = CASE WHEN a.actor_id = p_subject
                                  OR (a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types))
                                THEN NULL ELSE a.user_agent END,
            path         = auditq_erase_text(a.path, v_names, v_id, p_pseudonym),
            changes      = CASE WHEN a.changes::text ~* v_any
                                THEN auditq_erase_jsonb(a.changes, v_names, v_id, p_pseudonym)
                                ELSE a.changes END,
            metadata     = CASE WHEN a.metadata::text ~* v_any
                                THEN auditq_erase_jsonb(a.metadata, v_names, v_id, p_pseudonym)
                                ELSE a.metadata END,
            presentation = CASE WHEN a.presentation::text ~* v_any
                                THEN auditq_erase_jsonb(a.presentation, v_names, v_id, p_pseudonym)
                                ELSE a.presentation END
        WHERE a.seq = ANY(v_seqs)
        RETURNING a.seq, audit_row_digest(a) AS d
    )
    INSERT INTO row_replacement (action_id, seq, old_digest, new_digest)
    SELECT v_action, c.seq, o.d, c.d
    FROM changed_rows c JOIN unnest(v_seqs, v_old) AS o(seq, d) ON o.seq = c.seq
    WHERE o.d <> c.d;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM set_config('auditq.erasing', '', true);
    IF NOT p_mentions THEN
        PERFORM auditq_rollup_rows(v_range, 1);
    END IF;
    RETURN QUERY SELECT v_count, v_seqs[array_length(v_seqs, 1)], v_action;
END;
$$;

REVOKE ALL ON erased_subject, subject_key FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION auditq_anonymise_rows(text, text, text[], text[], boolean, bigint, integer)
    FROM PUBLIC;
GRANT SELECT ON erased_subject, subject_key TO auditq_worker;
GRANT SELECT, INSERT, UPDATE ON erased_subject TO auditq_api;
GRANT SELECT ON subject_key TO auditq_api;
GRANT EXECUTE ON FUNCTION auditq_anonymise_rows(text, text, text[], text[], boolean, bigint, integer)
    TO auditq_api;
-- (end of erasure)

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
CREATE TABLE IF NOT EXISTS delivery_log (
    xid       xid8        NOT NULL,
    seq_lo    bigint      NOT NULL,
    seq_hi    bigint      NOT NULL,
    n         integer     NOT NULL,
    seqs      int8multirange,                    -- NULL: every stored seq in [seq_lo, seq_hi]
    stored_at timestamptz NOT NULL DEFAULT now(),  -- the rows' received_at (transaction time)
    PRIMARY KEY (xid, seq_lo)
);
CREATE INDEX IF NOT EXISTS delivery_log_stored_idx ON delivery_log (stored_at);

CREATE OR REPLACE FUNCTION audit_log_queue_delivery() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_n  bigint;
BEGIN
    SELECT min(a.seq), max(a.seq), count(*) INTO v_lo, v_hi, v_n FROM new_rows a;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO public.delivery_log (xid, seq_lo, seq_hi, n)
        VALUES (pg_catalog.pg_current_xact_id(), v_lo, v_hi, v_n)
        ON CONFLICT (xid, seq_lo) DO NOTHING;
    ELSE
        INSERT INTO public.delivery_log (xid, seq_lo, seq_hi, n, seqs)
        SELECT pg_catalog.pg_current_xact_id(), v_lo, v_hi, v_n,
               range_agg(int8range(a.seq, a.seq, '[]'))
        FROM new_rows a
        ON CONFLICT (xid, seq_lo) DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS audit_log_queue_delivery ON audit_log;
CREATE TRIGGER audit_log_queue_delivery
    AFTER INSERT ON audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_queue_delivery();

-- Rows stored before this table existed: entries of up to a thousand seqs each, with a
-- transaction id below every real one (xid 1), so they come first in (xid, seq) order. Made
-- once, under the trigger's lock: no insert slips between the two.
INSERT INTO delivery_log (xid, seq_lo, seq_hi, n, stored_at)
SELECT '1'::xid8, min(seq), max(seq), count(*), min(received_at)
FROM audit_log
WHERE NOT EXISTS (SELECT FROM delivery_log)
GROUP BY seq / 1000
ON CONFLICT (xid, seq_lo) DO NOTHING;

-- The destinations themselves: an admin table. `filter` is the query string as given (§7
-- filter names), `filter_json` the same validated; `options` holds what is neither secret nor
-- a column (allow_private, a CA certificate, OCSF class overrides, HEC/Elasticsearch names).
CREATE TABLE IF NOT EXISTS destination (
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
CREATE TABLE IF NOT EXISTS destination_secret (
    destination_id bigint PRIMARY KEY REFERENCES destination (id) ON DELETE CASCADE,
    secret         text NOT NULL
);
-- Where each destination stands, and its health. The runner moves the position only from
-- the one it read (compare-and-set), so a backfill is never overwritten by a batch in flight.
CREATE TABLE IF NOT EXISTS destination_state (
    destination_id        bigint PRIMARY KEY REFERENCES destination (id) ON DELETE CASCADE,
    pos_xid               xid8        NOT NULL,
    pos_seq               bigint      NOT NULL,
    delivered_total       bigint      NOT NULL DEFAULT 0,
    failed_attempts_total bigint      NOT NULL DEFAULT 0,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    last_delivered_at     timestamptz,
    last_error            text,
    last_error_at         timestamptz
);

REVOKE ALL ON delivery_log, destination, destination_secret, destination_state
    FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION audit_log_queue_delivery() FROM PUBLIC;
-- The worker delivers: it reads the destinations (and their secrets, to sign) and moves
-- positions and health; it cannot add, change or remove a destination.
GRANT SELECT ON delivery_log, destination, destination_secret TO auditq_worker;
GRANT SELECT, UPDATE ON destination_state TO auditq_worker;
-- The API and the admin commands manage destinations; they send the test event themselves.
GRANT SELECT ON delivery_log TO auditq_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON destination, destination_secret, destination_state
    TO auditq_api;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO auditq_api',
                   pg_get_serial_sequence('destination', 'id'));
END;
$$;
-- (end of destinations)
