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
               ''::bytea ORDER BY a.seq)
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
    SELECT count(*), coalesce(range_agg(int8range(a.seq, a.seq, '[]')), '{}'),
           sha256(coalesce(string_agg(int8send(a.seq) || uuid_send(a.id) || audit_row_digest(a),
                                      ''::bytea ORDER BY a.seq), ''::bytea))
      INTO v_rows, v_seqs, v_digest
      FROM audit_log a WHERE a.ts >= v_from AND a.ts < v_to;
    SELECT NOT EXISTS (SELECT FROM seal_pending p WHERE p.kind = 'row' AND p.seqs && v_seqs)
      INTO v_sealed;
    EXECUTE format('DROP TABLE %I', p_name);
    RETURN auditq_record_action('partition.dropped', jsonb_build_object(
        'partition', p_name, 'from', v_from, 'to', v_to, 'rows', v_rows, 'sealed', v_sealed,
        'digest', encode(v_digest, 'hex'), 'retention_days', p_retention_days), v_seqs);
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
    integrity_verification, api_token, api_secret
    FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON SEQUENCE audit_log_seq, store_action_seq FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION auditq_ensure_partition(date), auditq_drop_partition(text, integer),
    auditq_record_action(text, jsonb, int8multirange), audit_log_queue_seal()
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
GRANT EXECUTE ON FUNCTION auditq_ensure_partition(date), auditq_drop_partition(text, integer)
    TO auditq_worker;

-- The API and the admin commands: read everything, manage tokens, record verifications.
GRANT SELECT ON audit_log, seal_pending, seal_checkpoint, store_action, row_replacement,
    api_secret TO auditq_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON api_token TO auditq_api;
GRANT SELECT, INSERT ON integrity_verification TO auditq_api;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, %s TO auditq_api',
                   pg_get_serial_sequence('api_token', 'id'),
                   pg_get_serial_sequence('integrity_verification', 'id'));
END;
$$;
