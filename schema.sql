-- auditq's schema as a new store gets it: `auditq migrate` runs this file on an empty
-- database (after service/store/preflight.sql: who may create objects here). PostgreSQL >= 14.
--
-- A store made earlier reaches the same schema through the numbered, forward-only files of
-- service/store/migrations/, recorded in auditq_schema_version (service/store/schema.py). A
-- change goes in both: here, and in a new migration; tests/store/test_migrations.py checks
-- that a fresh store and a migrated one have the same catalog.
--
-- Contents
--   1. Tables        the rows; integrity (seal queue, checkpoints, store actions); the
--                    transparency log; the store's policy; the statistics rollup; tokens and
--                    secrets; erasure; destinations; schema versions
--   2. Views
--   3. Functions     by concern: rows and events; sealing and append-only; partitions; the
--                    policy and retention; the statistics rollup; admin writes (least
--                    privilege); erasure; destinations
--   4. Indexes
--   5. Triggers
--   6. Privileges    the runtime roles, and every REVOKE and GRANT
--   7. Seed rows
--
-- Names: every function is auditq_*; a trigger is named for its table and what it does.
-- Every function runs with `search_path = pg_catalog, pg_temp` and names auditq's objects
-- `public.`-qualified: no caller can put its own table or function in the way (a test checks).


-- =======================================================================================
-- 1. Tables
-- =======================================================================================

-- ---------------------------------------------------------------------------------------
-- 1.1 The rows (docs/integrity.md for seq and received_via)

-- CACHE: each session takes seqs a thousand at a time, so one statement's rows are
-- (nearly always) one contiguous range, which the seal trigger records cheaply.
CREATE SEQUENCE public.audit_log_seq CACHE 1000;

CREATE TABLE public.audit_log (
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
    -- Full text over names, metadata and changes; STORED so it can be indexed (PostgreSQL 18).
    search       tsvector GENERATED ALWAYS AS (
        to_tsvector('simple',
            coalesce(action, '') || ' ' || coalesce(actor_name, '') || ' ' ||
            coalesce(entity_name, '') || ' ' || coalesce(metadata::text, '') || ' ' ||
            coalesce(changes::text, ''))
    ) STORED,
    -- Added after the first release, so after `search` (where a migrated store has them too).
    -- Who delivered the row (contract §5 Provenance): set by auditq, never by the producer.
    received_via text,
    -- Position in the seal queue (docs/integrity.md); only its default fills it.
    seq          bigint      NOT NULL DEFAULT nextval('audit_log_seq'),
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

-- Rows outside every monthly partition (far past or future) land here instead of failing.
CREATE TABLE public.audit_log_default PARTITION OF public.audit_log DEFAULT;
ALTER SEQUENCE public.audit_log_seq OWNED BY public.audit_log.seq CACHE 1000;

-- ---------------------------------------------------------------------------------------
-- 1.2 Integrity (docs/integrity.md): the seal queue, checkpoints, and what the definer
-- functions did

-- One entry per inserting statement: the seqs it stored, committed with them (`entries`:
-- the v1 checkpoint entries of rows queued before migration 0007). The sealer deletes the
-- entries it can see (committed ones), so no row is skipped or sealed twice.
CREATE TABLE public.seal_pending (
    kind      text           NOT NULL CHECK (kind IN ('row', 'action')),
    seqs      int8multirange NOT NULL,
    queued_at timestamptz    NOT NULL DEFAULT now(),
    entries   bytea
);
ALTER TABLE public.seal_pending ALTER COLUMN entries SET STORAGE EXTERNAL;

-- Signed, chained checkpoints; `rows`/`actions` hold 40-byte entries sorted by seq.
CREATE TABLE public.seal_checkpoint (
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
-- Entries are digests: not worth trying to compress.
ALTER TABLE public.seal_checkpoint ALTER COLUMN rows SET STORAGE EXTERNAL,
                            ALTER COLUMN actions SET STORAGE EXTERNAL;

-- What the SECURITY DEFINER functions did (partition made or dropped, subject anonymised).
CREATE SEQUENCE public.store_action_seq;
CREATE TABLE public.store_action (
    id     bigint         PRIMARY KEY DEFAULT nextval('public.store_action_seq'),
    at     timestamptz    NOT NULL DEFAULT now(),
    action text           NOT NULL,
    actor  text           NOT NULL DEFAULT session_user,
    detail jsonb          NOT NULL,
    seqs   int8multirange            -- rows it removed (retention)
);
ALTER SEQUENCE public.store_action_seq OWNED BY public.store_action.id;

-- Erasure: each row changed in place, with its digest before and after.
CREATE TABLE public.row_replacement (
    action_id  bigint NOT NULL REFERENCES public.store_action (id),
    seq        bigint NOT NULL,
    old_digest bytea  NOT NULL,
    new_digest bytea  NOT NULL,
    PRIMARY KEY (action_id, seq)
);

-- Results of `POST /api/v1/admin/integrity/verify` and `auditq verify` runs.
CREATE TABLE public.integrity_verification (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result      jsonb
);

-- ---------------------------------------------------------------------------------------
-- 1.3 The transparency log (docs/integrity.md, "The transparency log"): stored rows and
-- store actions as leaves of one RFC 6962 tree, in the order the sealer appended them. The
-- tree begins after the rows the v1 checkpoints sealed. Append-only for every runtime role.

-- A batch: the leaves one seal appended, rows (in seq order) then actions (in id order).
CREATE TABLE public.tlog_batch (
    first      bigint         PRIMARY KEY,  -- leaf index of its first leaf
    size       integer        NOT NULL CHECK (size > 0),
    row_seqs   int8multirange NOT NULL,
    action_ids int8multirange NOT NULL,
    hashes     bytea          NOT NULL CHECK (length(hashes) = 32 * size)
);
ALTER TABLE public.tlog_batch ALTER COLUMN hashes SET STORAGE EXTERNAL;  -- substr reads a slice

-- Tiles: the hashes of the complete nodes at height 8*level, 256 a tile (C2SP tlog-tiles'
-- shape); a tile still filling is stored again each time it grows (the widest one counts).
CREATE TABLE public.tlog_tile (
    level  smallint NOT NULL CHECK (level >= 1),
    idx    bigint   NOT NULL,
    width  smallint NOT NULL CHECK (width BETWEEN 1 AND 256),
    hashes bytea    NOT NULL CHECK (length(hashes) = 32 * width),
    PRIMARY KEY (level, idx, width)
);

-- Signed checkpoints (C2SP tlog-checkpoint notes) and the witnesses' cosignatures.
CREATE TABLE public.tlog_checkpoint (
    size      bigint      PRIMARY KEY,
    note      text        NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.tlog_cosignature (
    size        bigint      NOT NULL,
    witness     text        NOT NULL,
    line        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (size, witness)
);

-- Sealing stopped: why (the sealer found the log not extending its last checkpoint), and
-- what each witness last answered. Status only; the API shows the latest.
CREATE TABLE public.tlog_seal_stop (
    at     timestamptz NOT NULL DEFAULT now(),
    reason text        NOT NULL
);
CREATE TABLE public.tlog_witness_status (
    at             timestamptz NOT NULL DEFAULT now(),
    url            text        NOT NULL,
    cosigned_size  bigint,
    error          text
);

-- Erasures in the log: each row an erasure action changed, its leaf hash before and after
-- (the action's leaf names them; a receipt of the row carries the action's leaf).
CREATE TABLE public.tlog_erasure (
    action_leaf bigint NOT NULL,  -- leaf index of the erasure action
    action_id   bigint NOT NULL,
    leaf_index  bigint NOT NULL,  -- the row's leaf
    seq         bigint NOT NULL,
    before      bytea  NOT NULL,
    after       bytea  NOT NULL,
    PRIMARY KEY (action_leaf, leaf_index)
);

-- ---------------------------------------------------------------------------------------
-- 1.4 The store's policy (contract §6; docs/integrity.md, "Retention"). The retention period
-- is a row only the schema owner writes (`auditq policy set`); every change is stamped and
-- recorded as a sealed store action by its triggers. The removal functions read their limit
-- from it: no caller chooses it, and nothing younger than the policy allows is ever removed.
-- subject_entity_types: the types of entity whose id names a data subject (contract §9,
-- AUDITQ_SUBJECT_ENTITY_TYPES), as the owner pinned them (`auditq migrate` pins its own
-- setting on a new store; `auditq policy set --subject-entity-types`): an erasure's caller
-- may narrow them, never widen them. Null (a store migrated by db.migrate alone, as the
-- tests do): the caller's configured types.
CREATE TABLE public.store_policy (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    retention_days integer     CHECK (retention_days >= 1),  -- null: rows are kept for ever
    set_at         timestamptz,
    set_by         text,
    subject_entity_types text[]
);

-- ---------------------------------------------------------------------------------------
-- 1.5 The statistics rollup (docs/scaling.md, "Statistics"): counts per UTC day of the
-- stored rows, so the statistics route sums a few thousand rollup rows instead of every row
-- of its window. Exact under any snapshot: every change of the rows and of the rollup
-- commits together. A stored row is either still queued in rollup_pending (the API counts it
-- from the row) or folded into the three tables below, never both; retention and erasure
-- take the rows they remove or change out of the rollup in their own transaction, under the
-- rollup lock.

-- One entry per inserting statement: the seqs it stored, committed with them (as seal_pending).
CREATE TABLE public.rollup_pending (
    seqs int8multirange NOT NULL
);
-- Counts by day and what every window sums: action, severity, outcome (all rows).
CREATE TABLE public.rollup_day (
    day      date   NOT NULL,
    action   text   NOT NULL,
    severity text   NOT NULL,
    outcome  text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (day, action, severity, outcome)
);
-- The same for each tenant (rows that have one).
CREATE TABLE public.rollup_day_tenant (
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
CREATE TABLE public.rollup_day_actor (
    day      date   NOT NULL,
    actor_id text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (day, actor_id)
);

-- ---------------------------------------------------------------------------------------
-- 1.6 Tokens and secrets

-- API tokens: only a SHA-256 of each token is stored; the token itself is shown once.
CREATE TABLE public.api_token (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('reader', 'admin', 'ingest')),
    token_hash  bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

-- Secrets the API derives keys from (the HMAC key of pagination cursors): made once per
-- database, so every API replica, before and after a restart, signs and checks alike.
CREATE TABLE public.api_secret (
    name       text        PRIMARY KEY,
    secret     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------
-- 1.7 Erasure (docs/erasure.md): forgetting one data subject without breaking the proof.
-- The key of the pseudonyms, HMAC-SHA256(key, subject id), is not in the database: it is a
-- file beside the seal key (AUDITQ_SUBJECT_KEY_FILE).

-- Erased subjects, by pseudonym only (never the id): the worker pseudonymises their later
-- events; the API reports the state of each erasure, and where a running one stands.
CREATE TABLE public.erased_subject (
    pseudonym    text        PRIMARY KEY,
    state        text        NOT NULL CHECK (state IN ('running', 'done')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    rows         bigint      NOT NULL DEFAULT 0,
    dead_letters bigint      NOT NULL DEFAULT 0,
    phase        text        NOT NULL DEFAULT 'done'
                 CHECK (phase IN ('start', 'mentions', 'subject', 'done')),
    after_seq    bigint      NOT NULL DEFAULT 0,
    first_action bigint,
    last_action  bigint
);

-- The subject's values gathered when its erasure began (names, emails, addresses of its own
-- rows: cleared from every other row's texts, then from its own); deleted when it is done.
-- everywhere false: too common to clear from other people's rows, or a client address
-- another actor used too (a NAT, a load balancer, a proxy), or a loopback or private one.
CREATE TABLE public.erasure_value (
    pseudonym  text    NOT NULL REFERENCES public.erased_subject (pseudonym),
    value      text    NOT NULL,
    everywhere boolean NOT NULL DEFAULT true,
    PRIMARY KEY (pseudonym, value)
);

-- Later events (contract §9): workers clear other people's events of an erased subject's id,
-- names and emails. The store keeps no value of the subject, only a keyed digest of each
-- (service/mentions.py: BLAKE2b keyed with the subject key, a file no database role reads),
-- of its first word, and its number of words; the replacement is the pseudonym for the id,
-- null for a name or email. Values too common to clear everywhere are not among them.
CREATE TABLE public.erased_mention (
    pseudonym text    NOT NULL REFERENCES public.erased_subject (pseudonym),
    digest    bytea   NOT NULL CHECK (octet_length(digest) = 16),
    anchor    bytea   NOT NULL CHECK (octet_length(anchor) = 16),
    words     integer NOT NULL CHECK (words BETWEEN 1 AND 16),
    is_id     boolean NOT NULL,
    -- A value too common to clear everywhere: only a JSON field naming a person that holds
    -- it whole is cleared (auditq_erase_person_fields; service/mentions.py PERSON_KEYS).
    person_only boolean NOT NULL DEFAULT false,
    PRIMARY KEY (pseudonym, digest)
);

-- ---------------------------------------------------------------------------------------
-- 1.8 Destinations (docs/destinations.md, contract §11): streaming the record out, at least
-- once, in stored order per destination, from a durable position.

-- A row's `seq` is not commit order (each session takes seqs a thousand at a time, and a
-- transaction may commit after one that took later seqs), so a position over `seq` alone
-- would skip rows that commit late. Each inserting statement therefore leaves one
-- `delivery_log` entry with its transaction id; a destination's position is (xid, seq), and a
-- runner reads only entries below the oldest transaction still running
-- (pg_snapshot_xmin): no entry can ever appear behind a position once it is passed.
CREATE TABLE public.delivery_log (
    xid       xid8        NOT NULL,
    seq_lo    bigint      NOT NULL,
    seq_hi    bigint      NOT NULL,
    n         integer     NOT NULL,
    seqs      int8multirange,                    -- NULL: every stored seq in [seq_lo, seq_hi]
    stored_at timestamptz NOT NULL DEFAULT now(),  -- the rows' received_at (transaction time)
    PRIMARY KEY (xid, seq_lo)
);

-- The destinations themselves: an admin table. `filter` is the query string as given (§7
-- filter names), `filter_json` the same validated; `options` holds what is neither secret nor
-- a column (allow_private, a CA certificate, OCSF class overrides, HEC/Elasticsearch names).
CREATE TABLE public.destination (
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
CREATE TABLE public.destination_secret (
    destination_id bigint PRIMARY KEY REFERENCES public.destination (id) ON DELETE CASCADE,
    secret         text NOT NULL
);

-- Where each destination stands, and its health. The runner moves the position only from
-- the one it read (compare-and-set), so a backfill is never overwritten by a batch in flight.
CREATE TABLE public.destination_state (
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

-- ---------------------------------------------------------------------------------------
-- 1.9 Schema versions (service/store/schema.py): which numbered migrations a store has.
CREATE TABLE public.auditq_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);


-- =======================================================================================
-- 2. Views
-- =======================================================================================

-- The provenance key, and only it, for the worker (it checks the API's tags with it).
CREATE VIEW public.provenance_key AS
    SELECT secret FROM public.api_secret WHERE name = 'provenance';


-- =======================================================================================
-- 3. Functions
-- =======================================================================================

-- ---------------------------------------------------------------------------------------
-- 3.1 Rows and auditq's own events

-- The row digest of docs/integrity.md, canonical form version 1: SHA-256 (first 16 bytes) of
-- PostgreSQL's binary form of the row of these columns. `auditq verify` reads the same record
-- through COPY and hashes it itself (service/integrity/canonical.py); a test keeps the two
-- identical. The anonymisation function records digests with it.
CREATE FUNCTION public.auditq_row_digest(r public.audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT substr(sha256(record_send(ROW(
    r.seq, r.id, r.ts, r.received_at, r.action, r.category, r.severity, r.outcome,
    r.actor_id, r.actor_type, r.actor_name, r.actor_email,
    r.entity_type, r.entity_id, r.entity_name, r.tenant,
    r.request_id, r.ip, r.user_agent, r.method, r.path, r.status, r.duration_ms,
    r.changes, r.metadata, r.presentation, r.source, r.received_via))), 1, 16)
$$;

-- A UUIDv7 made by the server (the wire format's id): 48 bits of Unix milliseconds, then
-- random bits from gen_random_uuid() with the version set to 7 (its variant bits stay).
CREATE FUNCTION public.auditq_new_event_id() RETURNS uuid
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT encode(set_byte(overlay(uuid_send(gen_random_uuid())
                               PLACING substr(int8send(floor(extract(epoch FROM clock_timestamp())
                                                             * 1000::numeric)::bigint), 3, 6)
                               FROM 1 FOR 6),
                       6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
              'hex'::text)::uuid
$$;

-- Store one event built by auditq itself (a store action's or an admin action's), from its
-- JSON (wire format §4): the server sets ts, received_at and received_via. Definer
-- functions only.
CREATE FUNCTION public.auditq_store_event(p_event jsonb, p_via text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid := coalesce((p_event ->> 'id')::uuid, gen_random_uuid());
    v_action text := p_event ->> 'action';
BEGIN
    INSERT INTO public.audit_log (
        id, ts, action, category, severity, outcome,
        actor_id, actor_type, actor_name, actor_email,
        entity_type, entity_id, entity_name, tenant,
        request_id, ip, user_agent, method, path, status, duration_ms,
        changes, metadata, presentation, source, received_via)
    VALUES (
        v_id, now(), v_action,
        coalesce(p_event ->> 'category', split_part(v_action, '.'::text, 1)),
        coalesce(p_event ->> 'severity', 'notice'::text),
        coalesce(p_event ->> 'outcome', 'success'::text),
        p_event #>> '{actor,id}'::text[], p_event #>> '{actor,type}'::text[],
        p_event #>> '{actor,name}'::text[], p_event #>> '{actor,email}'::text[],
        p_event #>> '{entity,type}'::text[], p_event #>> '{entity,id}'::text[],
        p_event #>> '{entity,name}'::text[], p_event ->> 'tenant',
        p_event #>> '{request,id}'::text[], (p_event #>> '{request,ip}'::text[])::inet,
        p_event #>> '{request,user_agent}'::text[], p_event #>> '{request,method}'::text[],
        p_event #>> '{request,path}'::text[], (p_event #>> '{request,status}'::text[])::integer,
        (p_event #>> '{request,duration_ms}'::text[])::double precision,
        p_event -> 'changes', p_event -> 'metadata',
        jsonb_build_object(
            'code', coalesce(p_event #>> '{presentation,code}'::text[], 'audit.' || v_action),
            'params', coalesce(p_event #> '{presentation,params}'::text[], '{}'::jsonb)),
        p_event ->> 'source', p_via);
    RETURN v_id;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.2 Sealing and append-only (docs/integrity.md)

-- Queue a statement's rows for the sealer, in the inserting transaction: the seqs it stored.
-- The sealer reads those rows and appends their leaves to the transparency log; nothing is
-- digested here (v1 entries are no longer made for new rows: migration 0007).
CREATE FUNCTION public.auditq_queue_seal() RETURNS trigger
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

-- Append-only, no escape: an UPDATE passes only inside the anonymisation function,
-- which runs as the table's owner and sets `auditq.erasing` to its store_action id. A runtime
-- role setting the flag is not the owner and is refused like any other.
CREATE FUNCTION public.auditq_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND coalesce(current_setting('auditq.erasing', true), '') ~ '^[0-9]+$'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                           WHERE oid = 'public.audit_log'::regclass) THEN
        RETURN NEW;
    END IF;
    -- Retention of the default partition's old rows (auditq_delete_expired_default_rows):
    -- only inside that function, which runs as the owner and sets the flag.
    IF TG_OP = 'DELETE'
       AND coalesce(current_setting('auditq.retention', true), '') = 'on'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                           WHERE oid = 'public.audit_log'::regclass) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'rows leave only through retention and change only through anonymisation';
END;
$$;

-- Checkpoints and the record of admin actions are append-only too (for everyone but a
-- superuser skipping triggers, which verify then catches).
CREATE FUNCTION public.auditq_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Record an admin action and queue it for the next checkpoint (definer functions only).
CREATE FUNCTION public.auditq_record_action(
    p_action text, p_detail jsonb, p_seqs int8multirange DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO public.store_action (action, detail, seqs) VALUES (p_action, p_detail, p_seqs)
    RETURNING id INTO v_id;
    INSERT INTO public.seal_pending (kind, seqs) VALUES ('action', int8multirange(int8range(v_id, v_id, '[]')));
    RETURN v_id;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.3 Partitions: the worker makes each month's ahead of time.

-- Make the monthly partition starting at p_month unless it exists; true when made.
CREATE FUNCTION public.auditq_ensure_partition(p_month date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name text := 'audit_log_y' || to_char(p_month::timestamp, 'YYYY'::text) || 'm'
                   || to_char(p_month::timestamp, 'MM'::text);
    v_end  date := (p_month + '1 month'::interval)::date;
BEGIN
    IF p_month IS NULL OR p_month <> date_trunc('month'::text, p_month::timestamp)::date THEN
        RAISE EXCEPTION 'a partition starts on the first of a month, not %', p_month
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One maker at a time: two workers starting on a new month would both find no partition
    -- and one would fail on the other's (held to the end of the caller's transaction).
    PERFORM pg_advisory_xact_lock(1635083369::integer, 1::integer);  -- 'audi', partitions
    IF to_regclass(('public.' || quote_ident(v_name))::text) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE public.%I PARTITION OF public.audit_log FOR VALUES FROM (%L) TO (%L)',
                   v_name, p_month, v_end);
    PERFORM public.auditq_record_action('partition.created', jsonb_build_object(
        'partition', v_name, 'from', p_month, 'to', v_end));
    RETURN true;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.4 The store's policy and retention. The worker may only ask "apply the policy"
-- (auditq_apply_retention()).

-- Who set it and when are the server's to say, not the writer's.
CREATE FUNCTION public.auditq_policy_stamp() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the store policy is one row: set retention_days to null instead'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    NEW.set_at := now();
    NEW.set_by := session_user::text;
    RETURN NEW;
END;
$$;

-- Every change of the policy is a store action, sealed like a row.
CREATE FUNCTION public.auditq_policy_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_jsonb(NEW) - 'set_at'::text - 'set_by'::text
       IS DISTINCT FROM to_jsonb(OLD) - 'set_at'::text - 'set_by'::text THEN
        PERFORM public.auditq_record_action('policy.set'::text, jsonb_build_object(
            'retention_days', NEW.retention_days, 'previous_retention_days', OLD.retention_days,
            'set_by', NEW.set_by) || jsonb_strip_nulls(jsonb_build_object(
            'subject_entity_types', to_jsonb(NEW) -> 'subject_entity_types',
            'previous_subject_entity_types', to_jsonb(OLD) -> 'subject_entity_types')));
    END IF;
    RETURN NULL;
END;
$$;

-- The instant before which the policy lets rows go; null when it keeps everything.
CREATE FUNCTION public.auditq_retention_cutoff() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT now() - make_interval(days => p.retention_days)
FROM public.store_policy p WHERE p.retention_days IS NOT NULL
$$;

-- Drop one monthly partition wholly older than the policy allows, recording what verify
-- needs to say so (rows, their seqs, whether all were sealed, final digest) and storing the
-- audit.partition_dropped event. Refuses anything the policy keeps.
CREATE FUNCTION public.auditq_drop_partition(p_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_match  text[] := regexp_match(p_name, '^audit_log_y(\d{4})m(\d{2})$'::text);
    v_cutoff timestamptz := public.auditq_retention_cutoff();
    v_policy integer := (SELECT p.retention_days FROM public.store_policy p);
    v_from   date;
    v_to     date;
    v_rows   bigint;
    v_seqs   int8multirange;
    v_digest bytea;
    v_sealed boolean;
    v_action bigint;
BEGIN
    IF v_match IS NULL THEN
        RAISE EXCEPTION 'not a monthly partition of audit_log: %', p_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_from := make_date(v_match[1]::integer, v_match[2]::integer, 1::integer);
    v_to := (v_from + '1 month'::interval)::date;
    IF v_cutoff IS NULL OR (v_to::timestamp AT TIME ZONE 'UTC'::text) > v_cutoff THEN
        RAISE EXCEPTION 'partition % is not wholly past the store''s retention policy (%)',
            p_name, coalesce(v_policy::text || ' days', 'none: rows are kept')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'the owner sets the policy: auditq policy set --retention-days N';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_inherits WHERE inhparent = 'public.audit_log'::regclass
                   AND inhrelid = to_regclass(('public.' || quote_ident(p_name))::text)) THEN
        RAISE EXCEPTION 'no partition %', p_name USING ERRCODE = 'undefined_table';
    END IF;
    -- The rollup loses the rows with them (taken first: the fold reads every partition).
    PERFORM pg_advisory_xact_lock(1919904876::bigint);  -- 'roll': the rollup lock
    SELECT count(*), coalesce(range_agg(int8range(a.seq, a.seq, '[]'::text)), '{}'::int8multirange),
           sha256(coalesce(string_agg(int8send(a.seq) || uuid_send(a.id) || public.auditq_row_digest(a),
                                      ''::bytea ORDER BY a.seq), ''::bytea))
      INTO v_rows, v_seqs, v_digest
      FROM public.audit_log a WHERE a.ts >= v_from AND a.ts < v_to;
    SELECT NOT EXISTS (SELECT FROM public.seal_pending p WHERE p.kind = 'row' AND p.seqs && v_seqs)
      INTO v_sealed;
    PERFORM public.auditq_rollup_rows(v_seqs, -1::integer);
    EXECUTE format('DROP TABLE public.%I'::text, p_name);
    v_action := public.auditq_record_action('partition.dropped'::text, jsonb_build_object(
        'partition', p_name, 'from', v_from, 'to', v_to, 'rows', v_rows, 'sealed', v_sealed,
        'digest', encode(v_digest, 'hex'::text), 'retention_days', v_policy), v_seqs);
    PERFORM public.auditq_store_event(jsonb_build_object(
        'action', 'audit.partition_dropped', 'severity', 'notice',
        'entity', jsonb_build_object('type', 'partition', 'id', p_name),
        'metadata', jsonb_build_object('rows', v_rows, 'retention_days', v_policy,
                                       'month', v_from, 'store_action', v_action),
        'source', 'auditq-worker'), 'worker'::text);
    RETURN v_action;
END;
$$;

-- Retention of rows in the default partition (months that had no partition of their own,
-- e.g. far-past events): deleted when older than the policy allows, recorded like a dropped
-- partition (rows, their seqs, whether all were sealed, final digest) for `auditq verify`.
CREATE FUNCTION public.auditq_delete_expired_default_rows() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_before timestamptz := public.auditq_retention_cutoff();
    v_policy integer := (SELECT p.retention_days FROM public.store_policy p);
    v_rows   bigint;
    v_seqs   int8multirange;
    v_digest bytea;
    v_sealed boolean;
    v_action bigint;
BEGIN
    IF v_before IS NULL THEN
        RETURN NULL;  -- the policy keeps every row
    END IF;
    PERFORM pg_advisory_xact_lock(1919904876::bigint);  -- 'roll': the rollup loses the rows
    SELECT count(*), coalesce(range_agg(int8range(a.seq, a.seq, '[]'::text)), '{}'::int8multirange),
           sha256(coalesce(string_agg(int8send(a.seq) || uuid_send(a.id) || public.auditq_row_digest(a),
                                      ''::bytea ORDER BY a.seq), ''::bytea))
      INTO v_rows, v_seqs, v_digest
      FROM public.audit_log_default a WHERE a.ts < v_before;
    IF v_rows = 0 THEN
        RETURN NULL;
    END IF;
    SELECT NOT EXISTS (SELECT FROM public.seal_pending p WHERE p.kind = 'row' AND p.seqs && v_seqs)
      INTO v_sealed;
    PERFORM public.auditq_rollup_rows(v_seqs, -1::integer);
    PERFORM set_config('auditq.retention'::text, 'on'::text, true);
    DELETE FROM public.audit_log_default WHERE ts < v_before;
    PERFORM set_config('auditq.retention'::text, ''::text, true);
    v_action := public.auditq_record_action('retention.rows_deleted'::text, jsonb_build_object(
        'partition', 'audit_log_default', 'before', v_before, 'rows', v_rows,
        'sealed', v_sealed, 'digest', encode(v_digest, 'hex'::text),
        'retention_days', v_policy), v_seqs);
    PERFORM public.auditq_store_event(jsonb_build_object(
        'action', 'audit.rows_expired', 'severity', 'notice',
        'entity', jsonb_build_object('type', 'partition', 'id', 'audit_log_default'),
        'metadata', jsonb_build_object('rows', v_rows, 'retention_days', v_policy,
                                       'store_action', v_action),
        'source', 'auditq-worker'), 'worker'::text);
    RETURN v_action;
END;
$$;

-- The worker's maintenance: apply the policy. Drops every monthly partition wholly past it
-- and deletes the default partition's rows past it; a partition busy past p_lock_timeout_ms
-- (a long read holds it) is left for the next run, so writes never queue behind retention.
-- One row per removal: (partition, rows, store action), or rows null for a busy partition.
CREATE FUNCTION public.auditq_apply_retention(p_lock_timeout_ms integer DEFAULT 200)
RETURNS TABLE (partition text, rows bigint, action_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_cutoff timestamptz := public.auditq_retention_cutoff();
    v_name   text;
    v_action bigint;
BEGIN
    IF v_cutoff IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('lock_timeout'::text,
                       (greatest(1, least(coalesce(p_lock_timeout_ms, 200), 60000)) || 'ms')::text,
                       true);
    FOR v_name IN
        SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.audit_log'::regclass
          AND c.relname ~ '^audit_log_y\d{4}m\d{2}$'::text
        ORDER BY c.relname
    LOOP
        IF ((make_date(substr(v_name, 12, 4)::integer, substr(v_name, 17, 2)::integer, 1::integer)
             + '1 month'::interval)::timestamp AT TIME ZONE 'UTC'::text) > v_cutoff THEN
            CONTINUE;
        END IF;
        BEGIN
            v_action := public.auditq_drop_partition(v_name);
            RETURN QUERY SELECT v_name, (s.detail ->> 'rows')::bigint, s.id
                         FROM public.store_action s WHERE s.id = v_action;
        EXCEPTION WHEN lock_not_available THEN
            RETURN QUERY SELECT v_name, NULL::bigint, NULL::bigint;
        END;
    END LOOP;
    BEGIN
        v_action := public.auditq_delete_expired_default_rows();
        IF v_action IS NOT NULL THEN
            RETURN QUERY SELECT 'audit_log_default'::text, (s.detail ->> 'rows')::bigint, s.id
                         FROM public.store_action s WHERE s.id = v_action;
        END IF;
    EXCEPTION WHEN lock_not_available THEN
        RETURN QUERY SELECT 'audit_log_default'::text, NULL::bigint, NULL::bigint;
    END;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.5 The statistics rollup

-- Queue a statement's rows for the fold, in the inserting transaction.
CREATE FUNCTION public.auditq_queue_rollup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lo bigint;
    v_hi bigint;
    v_n  bigint;
BEGIN
    SELECT min(seq), max(seq), count(*) INTO v_lo, v_hi, v_n FROM new_rows;
    IF v_n = 0 THEN
        RETURN NULL;
    ELSIF v_hi - v_lo + 1 = v_n THEN  -- one range: the usual case
        INSERT INTO public.rollup_pending (seqs) VALUES (int8multirange(int8range(v_lo, v_hi, '[]')));
    ELSE
        INSERT INTO public.rollup_pending (seqs) SELECT range_agg(int8range(seq, seq, '[]')) FROM new_rows;
    END IF;
    RETURN NULL;
END;
$$;

-- Count the rows of p_seqs that are folded (not pending), as they are now, into the rollup
-- (p_sign 1) or out of it (-1); keys left at 0 are deleted, so an erased actor id leaves the
-- rollup with its last row. One pass over the rows, a grouping set per table (GROUPING()
-- tells them apart). Callers hold the rollup lock.
CREATE FUNCTION public.auditq_rollup_rows(p_seqs int8multirange, p_sign integer)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_seqs   int8multirange := p_seqs - (SELECT coalesce(range_agg(seqs), '{}') FROM public.rollup_pending);
    v_day    tid[];
    v_tenant tid[];
    v_actor  tid[];
BEGIN
    WITH counted AS MATERIALIZED (
        SELECT GROUPING(a.tenant, a.actor_id, a.action) AS kind, a.day, a.tenant, a.actor_id,
               a.action, a.severity, a.outcome, count(*) * p_sign AS n
        FROM unnest(v_seqs) AS r, LATERAL (  -- OFFSET 0: by the seq index, always
            SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant, actor_id, action, severity, outcome
            FROM public.audit_log WHERE seq >= lower(r) AND seq < upper(r) OFFSET 0) AS a
        GROUP BY GROUPING SETS ((a.day, a.action, a.severity, a.outcome),
                                (a.tenant, a.day, a.action, a.severity, a.outcome),
                                (a.day, a.actor_id))
    ), by_day AS (
        INSERT INTO public.rollup_day AS r (day, action, severity, outcome, n)
        SELECT day, action, severity, outcome, n FROM counted WHERE kind = 6
        ON CONFLICT (day, action, severity, outcome) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    ), by_tenant AS (
        INSERT INTO public.rollup_day_tenant AS r (tenant, day, action, severity, outcome, n)
        SELECT tenant, day, action, severity, outcome, n FROM counted
        WHERE kind = 2 AND tenant IS NOT NULL
        ON CONFLICT (tenant, day, action, severity, outcome) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    ), by_actor AS (
        INSERT INTO public.rollup_day_actor AS r (day, actor_id, n)
        SELECT day, actor_id, n FROM counted WHERE kind = 5 AND actor_id IS NOT NULL
        ON CONFLICT (day, actor_id) DO UPDATE SET n = r.n + EXCLUDED.n
        RETURNING r.ctid, r.n
    )
    SELECT (SELECT array_agg(ctid) FROM by_day WHERE n = 0),
           (SELECT array_agg(ctid) FROM by_tenant WHERE n = 0),
           (SELECT array_agg(ctid) FROM by_actor WHERE n = 0)
      INTO v_day, v_tenant, v_actor;
    -- The keys counted down to 0 (their rows are gone, or changed to other keys).
    DELETE FROM public.rollup_day WHERE ctid = ANY(v_day);
    DELETE FROM public.rollup_day_tenant WHERE ctid = ANY(v_tenant);
    DELETE FROM public.rollup_day_actor WHERE ctid = ANY(v_actor);
END;
$$;

-- The worker's fold: up to p_limit pending entries (committed statements only: an open one's
-- entry is invisible and waits, like its rows) into the rollup, in one transaction. Returns
-- the entries folded, or null when another fold (or retention, or erasure) holds the lock.
CREATE FUNCTION public.auditq_rollup_fold(p_limit integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_entries bigint;
    v_seqs    int8multirange;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'auditq_rollup_fold: a limit of at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock(1919904876::bigint) THEN  -- 'roll': the rollup lock
        RETURN NULL;
    END IF;
    WITH taken AS (
        DELETE FROM public.rollup_pending
        WHERE ctid = ANY(ARRAY(SELECT ctid FROM public.rollup_pending LIMIT p_limit))
        RETURNING seqs
    )
    SELECT count(*), range_agg(seqs) INTO v_entries, v_seqs FROM taken;
    IF v_entries > 0 THEN
        PERFORM public.auditq_rollup_rows(v_seqs, 1);
    END IF;
    RETURN v_entries;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.6 Admin writes (docs/integrity.md, "Roles"): what the runtime roles write, they write
-- through definer functions that record what they did, as rows sealed like any other.

-- Admin actions (contract §7): the API's event of each mutation goes straight into the
-- store, stored as `api` with the server's id and time; it only inserts. Returns the id.
CREATE FUNCTION public.auditq_record_admin_event(p_event jsonb) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(p_event) IS DISTINCT FROM 'object'::text
       OR coalesce(p_event ->> 'action', ''::text)
          !~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,7}$'::text THEN
        RAISE EXCEPTION 'an admin event is an event object with an action'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN public.auditq_store_event(
        p_event - 'id'::text || jsonb_build_object('id', public.auditq_new_event_id()), 'api'::text);
END;
$$;

-- The event of an admin action a function of this section takes (a token's, a
-- destination's), stored as `api` with the server's id and time in the caller's transaction.
-- p_by is who asked: {"actor": {...}, "request": {...}, "source": "..."} of the event.
CREATE FUNCTION public.auditq_admin_event(
    p_action text, p_by jsonb, p_entity_type text, p_entity_id text, p_metadata jsonb
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.auditq_store_event(jsonb_build_object(
        'id', public.auditq_new_event_id(), 'action', p_action,
        'actor', p_by -> 'actor', 'request', p_by -> 'request',
        'source', coalesce(p_by ->> 'source', 'auditq-api'::text),
        'entity', jsonb_build_object('type', p_entity_type, 'id', p_entity_id),
        'metadata', p_metadata), 'api'::text);
END;
$$;

-- Tokens: made and revoked only here, each change stored with its event in one transaction.
CREATE FUNCTION public.auditq_create_token(
    p_name text, p_role text, p_hash bytea, p_by jsonb
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    IF octet_length(p_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'a token hash is 32 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.api_token (name, role, token_hash) VALUES (p_name, p_role, p_hash)
    RETURNING id INTO v_id;
    PERFORM public.auditq_admin_event('token.created'::text, p_by, 'api_token'::text, p_name,
        jsonb_build_object('name', p_name, 'role', p_role));
    RETURN v_id;
END;
$$;

-- Revoke the active token named p_name; its hash (to announce), or null when none is active.
CREATE FUNCTION public.auditq_revoke_token(p_name text, p_by jsonb) RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_hash bytea;
BEGIN
    UPDATE public.api_token SET revoked_at = now() WHERE name = p_name AND revoked_at IS NULL
    RETURNING token_hash INTO v_hash;
    IF v_hash IS NOT NULL THEN
        PERFORM public.auditq_admin_event('token.revoked'::text, p_by, 'api_token'::text,
            left(p_name, 1024), jsonb_build_object('name', left(p_name, 1024)));
    END IF;
    RETURN v_hash;
END;
$$;

-- A verification's result, kept with the integrity.verified event naming who ran it (a
-- result claimed by a stolen password is at least a sealed claim of that role's).
CREATE FUNCTION public.auditq_record_verification(
    p_started_at timestamptz, p_result jsonb, p_by jsonb
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id     bigint;
    v_intact boolean := coalesce((p_result ->> 'intact')::boolean, false);
BEGIN
    INSERT INTO public.integrity_verification (started_at, finished_at, result)
    VALUES (p_started_at, now(), p_result) RETURNING id INTO v_id;
    PERFORM public.auditq_store_event(jsonb_build_object(
        'id', public.auditq_new_event_id(), 'action', 'integrity.verified',
        'severity', CASE WHEN v_intact THEN 'notice' ELSE 'critical' END,
        'outcome', CASE WHEN v_intact THEN 'success' ELSE 'failure' END,
        'actor', p_by -> 'actor', 'request', p_by -> 'request',
        'source', coalesce(p_by ->> 'source', 'auditq-api'::text),
        'metadata', jsonb_strip_nulls(jsonb_build_object(
            'verification', v_id, 'recorded_by', session_user::text,
            'intact', v_intact, 'rows', p_result -> 'rows',
            'checkpoints', p_result -> 'checkpoints', 'findings', p_result -> 'findings',
            'error', p_result -> 'error'))), 'api'::text);
    RETURN v_id;
END;
$$;

-- Destinations (contract §11): added, changed, paused, resumed, moved back and removed only
-- here, each change stored with its destination.* event in one transaction (a stolen API
-- password cannot stop or re-point the record's streaming unseen). p_by as for tokens; the
-- secret goes to its table, the event says only whether there is one. Of the URL an event
-- keeps the host (a URL may carry a key), of the filter whether there is one (it may name
-- an erased subject; the API's own records are cleared of those, these are not).
CREATE FUNCTION public.auditq_destination_host(p_url text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)')
$$;

-- A new destination starts at the oldest transaction still running (every row committed
-- from then on is sent; when none is older than this one, just after this one's own record),
-- or just before the first entry stored at or after p_since. Its id, or null (and no event)
-- when the name is taken.
CREATE FUNCTION public.auditq_add_destination(
    p_name text, p_kind text, p_url text, p_format text, p_filter text, p_filter_json jsonb,
    p_options jsonb, p_secret text, p_since timestamptz, p_created_by text, p_by jsonb
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id  bigint;
    v_xid xid8;
    v_seq bigint := -1;
BEGIN
    INSERT INTO public.destination (name, kind, url, format, filter, filter_json, options,
                                    created_by)
    VALUES (p_name, p_kind, p_url, p_format, p_filter, p_filter_json, p_options, p_created_by)
    ON CONFLICT (name) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_secret IS NOT NULL THEN
        INSERT INTO public.destination_secret (destination_id, secret) VALUES (v_id, p_secret);
    END IF;
    PERFORM public.auditq_admin_event('destination.created'::text, p_by,
        'destination'::text, left(p_name, 256),
        jsonb_build_object('name', p_name, 'type', p_kind,
                           'host', public.auditq_destination_host(p_url), 'format', p_format,
                           'filter_set', p_filter <> '', 'secret_set', p_secret IS NOT NULL,
                           'since', p_since));
    IF p_since IS NOT NULL THEN
        SELECT min(l.xid) INTO v_xid FROM public.delivery_log l WHERE l.stored_at >= p_since;
    END IF;
    IF v_xid IS NULL THEN
        v_xid := pg_snapshot_xmin(pg_current_snapshot());
        IF v_xid >= pg_current_xact_id() THEN
            v_xid := pg_current_xact_id();
            SELECT coalesce(max(l.seq_hi), -1::bigint) INTO v_seq
            FROM public.delivery_log l WHERE l.xid = v_xid;
        END IF;
    END IF;
    INSERT INTO public.destination_state (destination_id, pos_xid, pos_seq)
    VALUES (v_id, v_xid, v_seq);
    RETURN v_id;
END;
$$;

-- A destination's new settings, and a new secret (p_secret), none (p_clear_secret) or the
-- same; p_changed names what the caller changed (only `paused`: destination.paused or
-- .resumed). False when there is no destination of that id.
CREATE FUNCTION public.auditq_update_destination(
    p_id bigint, p_url text, p_format text, p_filter text, p_filter_json jsonb,
    p_options jsonb, p_paused boolean, p_secret text, p_clear_secret boolean,
    p_changed text[], p_by jsonb
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name text;
BEGIN
    UPDATE public.destination
    SET url = p_url, format = p_format, filter = p_filter, filter_json = p_filter_json,
        options = p_options, paused = p_paused, updated_at = now()
    WHERE id = p_id
    RETURNING name INTO v_name;
    IF v_name IS NULL THEN
        RETURN false;
    END IF;
    IF p_secret IS NOT NULL THEN
        INSERT INTO public.destination_secret (destination_id, secret) VALUES (p_id, p_secret)
        ON CONFLICT (destination_id) DO UPDATE SET secret = excluded.secret;
    ELSIF p_clear_secret THEN
        DELETE FROM public.destination_secret WHERE destination_id = p_id;
    END IF;
    PERFORM public.auditq_admin_event(
        CASE WHEN p_changed IS DISTINCT FROM ARRAY['paused'::text] THEN 'destination.updated'::text
             WHEN p_paused THEN 'destination.paused'::text
             ELSE 'destination.resumed'::text END,
        p_by, 'destination'::text, left(v_name, 256),
        jsonb_build_object('name', v_name, 'changed', to_jsonb(p_changed)));
    RETURN true;
END;
$$;

-- Pause or resume by name; false when there is no destination of that name.
CREATE FUNCTION public.auditq_set_destination_paused(
    p_name text, p_paused boolean, p_by jsonb
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.destination SET paused = p_paused, updated_at = now() WHERE name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM public.auditq_admin_event(
        CASE WHEN p_paused THEN 'destination.paused'::text ELSE 'destination.resumed'::text END,
        p_by, 'destination'::text, left(p_name, 256), jsonb_build_object('name', p_name));
    RETURN true;
END;
$$;

-- Remove a destination, its secret and position; false when there is none of that name.
CREATE FUNCTION public.auditq_remove_destination(p_name text, p_by jsonb)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind text;
    v_url  text;
BEGIN
    DELETE FROM public.destination WHERE name = p_name RETURNING kind, url INTO v_kind, v_url;
    IF v_kind IS NULL THEN
        RETURN false;
    END IF;
    PERFORM public.auditq_admin_event('destination.removed'::text, p_by,
        'destination'::text, left(p_name, 256),
        jsonb_build_object('name', p_name, 'type', v_kind,
                           'host', public.auditq_destination_host(v_url)));
    RETURN true;
END;
$$;

-- Send again every row stored since p_since: the position moves back to just before the
-- first entry stored at or after it (or to now). The new position's xid (its seq is -1), or
-- null when there is no destination of that id.
CREATE FUNCTION public.auditq_backfill_destination(
    p_id bigint, p_since timestamptz, p_by jsonb
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name text;
    v_xid  xid8;
BEGIN
    SELECT name INTO v_name FROM public.destination WHERE id = p_id;
    IF v_name IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT min(l.xid) INTO v_xid FROM public.delivery_log l WHERE l.stored_at >= p_since;
    v_xid := coalesce(v_xid, pg_snapshot_xmin(pg_current_snapshot()));
    UPDATE public.destination_state SET pos_xid = v_xid, pos_seq = -1 WHERE destination_id = p_id;
    PERFORM public.auditq_admin_event('destination.backfilled'::text, p_by,
        'destination'::text, left(v_name, 256),
        jsonb_build_object('name', v_name, 'since', p_since));
    RETURN v_xid::text;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.7 Erasure (docs/erasure.md; docs/integrity.md, "Erasure"). One subject is pseudonymised
-- batch by batch; each batch is a sealed `store_action` with a `row_replacement` per changed
-- row, so `auditq verify` still passes and names the action. The API role may only name a
-- subject (and the pseudonym it derived from the key file, which no database role can read):
-- auditq_erase_subject() finds the subject's rows and values itself, with the entity types
-- of the store's policy, changes nothing else, and records the state, every batch and the
-- subject.anonymised event itself.
--
-- What is looked for (docs/erasure.md): the full-text column keeps URLs, paths, host names
-- and emails as single tokens, so the subject's id inside `/users/alice/x` is not a word of
-- it. The mention index sees every run of letters and digits of the texts an erasure clears
-- (entity name, request path, metadata, changes, presentation params) as a word of its own:
-- every value of the subject found literally in a text is a run of words of it, so the index
-- finds every such row. A value too short or too common to clear everywhere, and a client
-- address other actors share, are cleared only in the subject's own rows.

-- A regular expression matching any of p_values literally, not inside a longer word.
CREATE FUNCTION public.auditq_erase_pattern(p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT '(?<![[:alnum:]])(' || string_agg(regexp_replace(v, '([^[:alnum:][:space:]])', '\\\1', 'g'),
                                       '|' ORDER BY length(v) DESC, v)
       || ')(?![[:alnum:]])'
FROM unnest(p_values) AS v WHERE length(v) > 0
$$;

-- Text cleared of the subject: names/emails (p_names, any case) -> [erased], id -> pseudonym.
CREATE FUNCTION public.auditq_erase_text(t text, p_names text, p_id text, p_pseudonym text)
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN p_id IS NULL THEN x ELSE regexp_replace(x, p_id, p_pseudonym, 'g') END
FROM (SELECT CASE WHEN p_names IS NULL OR t IS NULL THEN t
                  ELSE regexp_replace(t, p_names, '[erased]', 'gi') END AS x) s
$$;

-- The same over every key and string of a JSON value, at any depth.
CREATE FUNCTION public.auditq_erase_jsonb(j jsonb, p_names text, p_id text, p_pseudonym text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    CASE jsonb_typeof(j)
        WHEN 'object' THEN
            RETURN coalesce((SELECT jsonb_object_agg(public.auditq_erase_text(k, p_names, p_id, p_pseudonym),
                                                     public.auditq_erase_jsonb(v, p_names, p_id, p_pseudonym))
                             FROM jsonb_each(j) AS e(k, v)), '{}'::jsonb);
        WHEN 'array' THEN
            RETURN coalesce((SELECT jsonb_agg(public.auditq_erase_jsonb(v, p_names, p_id, p_pseudonym) ORDER BY o)
                             FROM jsonb_array_elements(j) WITH ORDINALITY AS e(v, o)), '[]'::jsonb);
        WHEN 'string' THEN
            RETURN to_jsonb(public.auditq_erase_text(j #>> '{}', p_names, p_id, p_pseudonym));
        ELSE
            RETURN j;
    END CASE;
END;
$$;

-- The words of a text: every run of letters and digits, anything else a space.
CREATE FUNCTION public.auditq_mention_words(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT regexp_replace(t, '[^[:alnum:]]+', ' ', 'g')
$$;

-- The words of the texts an erasure clears in another row. JSON's own escapes (`\n`,
-- `\u0001`, `\\`, `\"`) are spaces first, so `"a\nalice"` has the word `alice`.
CREATE FUNCTION public.auditq_mention_text(
    p_entity_name text, p_path text, p_metadata jsonb, p_changes jsonb, p_params jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT public.auditq_mention_words(regexp_replace(
    concat_ws(' '::text, p_entity_name, p_path, p_metadata::text, p_changes::text, p_params::text),
    '\\(u[0-9a-fA-F]{4}|.)', ' ', 'g'))
$$;

-- Too short or too common to clear from other people's rows: it would match unrelated text
-- (`42` in "42 items", `admin` in any sentence). Such a value is cleared only in the
-- subject's own rows (docs/erasure.md, "Values too common to look for").
CREATE FUNCTION public.auditq_erase_value_is_common(v text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT length(v) < 4
    OR v !~ '[[:alnum:]]'
    OR (v ~ '^[0-9]+$' AND length(v) < 8)
    OR lower(v) = ANY (ARRAY['admin', 'administrator', 'root', 'system', 'user', 'users',
        'test', 'guest', 'anonymous', 'unknown', 'none', 'null', 'nobody', 'service', 'support',
        'info', 'noreply', 'operator', 'auditq', 'default', 'demo', 'owner', 'staff', 'team',
        'robot', 'public', 'everyone', 'customer', 'member', 'manager', 'api', 'cli'])
$$;

-- Fields that name a person: in other people's rows a value too common to clear everywhere
-- is still cleared where a JSON field that names a person holds it whole (`{"user_id": "42"}`,
-- `{"owner": {"id": "42"}}`, any case of the key): the id becomes the pseudonym, a name or
-- email `[erased]`. p_common: the values, lowercased. Keys inside such a field's object
-- (`id`, `name`, `email`, `login`, `username`) name the same person.
CREATE FUNCTION public.auditq_erase_person_fields(
    j jsonb, p_common text[], p_id text, p_pseudonym text, p_person boolean DEFAULT false
) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys CONSTANT text[] := ARRAY['user', 'userid', 'user_id', 'username', 'user_name',
        'login', 'email', 'actor', 'actorid', 'actor_id', 'subject', 'subjectid', 'subject_id',
        'owner', 'ownerid', 'owner_id', 'account', 'accountid', 'account_id', 'member',
        'memberid', 'member_id', 'customer', 'customerid', 'customer_id', 'person',
        'personid', 'person_id', 'assignee', 'assignee_id', 'assigneeid', 'invitee',
        'invitee_id', 'recipient', 'recipient_id', 'author', 'author_id'];
    v_inner CONSTANT text[] := ARRAY['id', 'name', 'email', 'login', 'username'];
BEGIN
    IF j IS NULL OR coalesce(cardinality(p_common), 0) = 0 THEN
        RETURN j;
    END IF;
    CASE jsonb_typeof(j)
        WHEN 'object' THEN
            RETURN coalesce((SELECT jsonb_object_agg(e.k, public.auditq_erase_person_fields(
                                 e.v, p_common, p_id, p_pseudonym,
                                 lower(e.k) = ANY(v_keys) OR (p_person AND lower(e.k) = ANY(v_inner))))
                             FROM jsonb_each(j) AS e(k, v)), '{}'::jsonb);
        WHEN 'array' THEN
            RETURN coalesce((SELECT jsonb_agg(public.auditq_erase_person_fields(
                                 e.v, p_common, p_id, p_pseudonym, p_person) ORDER BY e.o)
                             FROM jsonb_array_elements(j) WITH ORDINALITY AS e(v, o)), '[]'::jsonb);
        WHEN 'string', 'number' THEN
            IF p_person AND lower(j #>> '{}') = ANY(p_common) THEN
                RETURN to_jsonb(CASE WHEN j #>> '{}' = p_id THEN p_pseudonym
                                     ELSE '[erased]'::text END);
            END IF;
            RETURN j;
        ELSE
            RETURN j;
    END CASE;
END;
$$;

-- One batch of an erasure, in the caller's transaction; returns the rows changed, the last
-- seq looked at and the store_action recording the batch (null when nothing matched).
-- p_mentions false: the subject's own rows (actor, or entity of a type in p_entity_types):
-- ids -> pseudonym; names, emails, client IP, user agent removed; texts cleared of every
-- value. p_mentions true: other rows whose texts hold one of p_values (the values to clear
-- everywhere; the id only when it is one of them), found with the mention index and checked
-- literally, in seq order after p_after: entity name, path, metadata, changes, presentation
-- cleared.
CREATE FUNCTION public.auditq_anonymise_rows(
    p_subject text, p_pseudonym text, p_entity_types text[], p_values text[],
    p_mentions boolean, p_after bigint, p_limit integer
) RETURNS TABLE (changed bigint, last_seq bigint, action_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_names  text := public.auditq_erase_pattern(array_remove(p_values, p_subject));
    -- A common id (auditq_erase_value_is_common) is not among the mentions' values.
    v_id     text := CASE WHEN NOT p_mentions OR p_subject = ANY(p_values)
                          THEN public.auditq_erase_pattern(ARRAY[p_subject]) END;
    -- Any value, as it is or as JSON text escapes it, not inside a longer word: the rows
    -- the mention index finds are changed only where one is really there.
    v_match  text := public.auditq_erase_pattern(ARRAY(
                         SELECT v FROM unnest(p_values) v
                         UNION SELECT substr(to_json(v)::text, 2, length(to_json(v)::text) - 2)
                         FROM unnest(p_values) v));
    -- Any value, as it is or as JSON text escapes it, anywhere: may this text hold one?
    v_any    text := (SELECT string_agg(regexp_replace(x, '([^[:alnum:][:space:]])', '\\\1', 'g'), '|')
                      FROM (SELECT v AS x FROM unnest(p_values) v WHERE length(v) > 0
                            UNION SELECT substr(to_json(v)::text, 2, length(to_json(v)::text) - 2)
                            FROM unnest(p_values) v WHERE length(v) > 0) s);
    v_query  tsquery;
    -- Values too common to clear everywhere: in other rows only in fields naming a person.
    v_common text[] := CASE WHEN p_mentions THEN ARRAY(
                           SELECT lower(v.value) FROM public.erasure_value v
                           WHERE v.pseudonym = p_pseudonym AND NOT v.everywhere) END;
    v_cquery tsquery;
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
    PERFORM pg_advisory_xact_lock(1635083621::bigint);  -- "anon"
    -- The subject's own rows change an actor id the rollup counts (the mentions pass changes
    -- nothing it counts): the rollup moves their counts to the pseudonym in this transaction.
    IF NOT p_mentions THEN
        PERFORM pg_advisory_xact_lock(1919904876::bigint);  -- 'roll': the rollup lock
    END IF;
    IF p_mentions THEN
        FOREACH v_value IN ARRAY coalesce(p_values, '{}') LOOP
            -- Its words, all of them (not as a phrase: word positions stop counting at
            -- 16,383, so a phrase could miss a long text; the literal check is exact).
            v_part := plainto_tsquery('simple'::regconfig, public.auditq_mention_words(v_value));
            IF numnode(v_part) > 0 THEN
                v_query := CASE WHEN v_query IS NULL THEN v_part ELSE v_query || v_part END;
            END IF;
        END LOOP;
        FOREACH v_value IN ARRAY coalesce(v_common, '{}') LOOP
            v_part := plainto_tsquery('simple'::regconfig, public.auditq_mention_words(v_value));
            IF numnode(v_part) > 0 THEN
                v_cquery := CASE WHEN v_cquery IS NULL THEN v_part ELSE v_cquery || v_part END;
            END IF;
        END LOOP;
        IF v_query IS NULL AND v_cquery IS NULL THEN
            RETURN QUERY SELECT 0::bigint, p_after, NULL::bigint;
            RETURN;
        END IF;
        SELECT array_agg(s.seq ORDER BY s.seq), array_agg(s.d ORDER BY s.seq) INTO v_seqs, v_old
        FROM (SELECT a.seq, public.auditq_row_digest(a) AS d FROM public.audit_log a
              WHERE to_tsvector('simple'::regconfig, public.auditq_mention_text(
                        a.entity_name, a.path, a.metadata, a.changes, a.presentation -> 'params'))
                    @@ (CASE WHEN v_query IS NULL THEN v_cquery
                             WHEN v_cquery IS NULL THEN v_query ELSE v_query || v_cquery END)
                AND (concat_ws(' '::text, a.entity_name, a.path, a.metadata::text,
                               a.changes::text, a.presentation::text) ~* v_match
                     OR (v_cquery IS NOT NULL AND (
                         public.auditq_erase_person_fields(a.metadata, v_common, p_subject, p_pseudonym)
                             IS DISTINCT FROM a.metadata
                         OR public.auditq_erase_person_fields(a.changes, v_common, p_subject, p_pseudonym)
                             IS DISTINCT FROM a.changes
                         OR public.auditq_erase_person_fields(a.presentation, v_common, p_subject,
                                                              p_pseudonym)
                             IS DISTINCT FROM a.presentation)))
                AND a.seq > coalesce(p_after, 0)
                AND NOT coalesce(a.actor_id = p_subject, false)
                AND NOT coalesce(a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types), false)
              ORDER BY a.seq LIMIT p_limit) s;
    ELSE
        SELECT array_agg(s.seq ORDER BY s.seq), array_agg(s.d ORDER BY s.seq) INTO v_seqs, v_old
        -- In index order (actor, or entity, then ts): the walk never scans the table, and the
        -- rows already changed no longer match, so each batch starts where the last ended.
        FROM ((SELECT a.seq, public.auditq_row_digest(a) AS d FROM public.audit_log a
               WHERE a.actor_id = p_subject ORDER BY a.ts DESC LIMIT p_limit)
              UNION
              (SELECT a.seq, public.auditq_row_digest(a) AS d FROM public.audit_log a
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
        PERFORM public.auditq_rollup_rows(v_range, -1);
    END IF;
    v_action := public.auditq_record_action('subject.anonymised', jsonb_build_object(
        'pseudonym', p_pseudonym, 'part', CASE WHEN p_mentions THEN 'mentions' ELSE 'subject' END));
    PERFORM set_config('auditq.erasing', v_action::text, true);
    -- SET sees the row before the change; a text is walked only if it may hold a value.
    WITH changed_rows AS (
        UPDATE public.audit_log a SET
            actor_id     = CASE WHEN a.actor_id = p_subject THEN p_pseudonym ELSE a.actor_id END,
            actor_name   = CASE WHEN a.actor_id = p_subject THEN NULL ELSE a.actor_name END,
            actor_email  = CASE WHEN a.actor_id = p_subject THEN NULL ELSE a.actor_email END,
            entity_id    = CASE WHEN a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types)
                                THEN p_pseudonym ELSE a.entity_id END,
            entity_name  = CASE WHEN a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types)
                                THEN NULL
                                ELSE public.auditq_erase_text(a.entity_name, v_names, v_id, p_pseudonym) END,
            ip           = CASE WHEN a.actor_id = p_subject
                                  OR (a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types))
                                THEN NULL ELSE a.ip END,
            user_agent   = CASE WHEN a.actor_id = p_subject
                                  OR (a.entity_id = p_subject AND a.entity_type = ANY(p_entity_types))
                                THEN NULL ELSE a.user_agent END,
            path         = public.auditq_erase_text(a.path, v_names, v_id, p_pseudonym),
            changes      = public.auditq_erase_person_fields(
                               CASE WHEN a.changes::text ~* v_any
                                    THEN public.auditq_erase_jsonb(a.changes, v_names, v_id, p_pseudonym)
                                    ELSE a.changes END, v_common, p_subject, p_pseudonym),
            metadata     = public.auditq_erase_person_fields(
                               CASE WHEN a.metadata::text ~* v_any
                                    THEN public.auditq_erase_jsonb(a.metadata, v_names, v_id, p_pseudonym)
                                    ELSE a.metadata END, v_common, p_subject, p_pseudonym),
            presentation = public.auditq_erase_person_fields(
                               CASE WHEN a.presentation::text ~* v_any
                                    THEN public.auditq_erase_jsonb(a.presentation, v_names, v_id,
                                                                   p_pseudonym)
                                    ELSE a.presentation END, v_common, p_subject, p_pseudonym)
        WHERE a.seq = ANY(v_seqs)
        RETURNING a.seq, public.auditq_row_digest(a) AS d
    )
    INSERT INTO public.row_replacement (action_id, seq, old_digest, new_digest)
    SELECT v_action, c.seq, o.d, c.d
    FROM changed_rows c JOIN unnest(v_seqs, v_old) AS o(seq, d) ON o.seq = c.seq
    WHERE o.d <> c.d;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM set_config('auditq.erasing', '', true);
    IF NOT p_mentions THEN
        PERFORM public.auditq_rollup_rows(v_range, 1);
    END IF;
    RETURN QUERY SELECT v_count, v_seqs[array_length(v_seqs, 1)], v_action;
END;
$$;

-- Mark the pseudonym erased (running) before anything else, so workers store the subject's
-- later events pseudonymised at once. Asking again restarts a finished erasure.
CREATE FUNCTION public.auditq_register_erasure(p_pseudonym text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(p_pseudonym, ''::text) !~ '^anon_[0-9a-f]{32}$'::text THEN
        RAISE EXCEPTION 'not a pseudonym: %', left(p_pseudonym, 64)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.erased_subject (pseudonym, state, phase)
    VALUES (p_pseudonym, 'running', 'start')
    ON CONFLICT (pseudonym) DO UPDATE SET state = 'running', finished_at = NULL,
        phase = CASE WHEN public.erased_subject.phase = 'done' THEN 'start'
                     ELSE public.erased_subject.phase END;
    RETURN (SELECT e.state FROM public.erased_subject e WHERE e.pseudonym = p_pseudonym);
END;
$$;

-- One step of the subject's erasure, in the caller's (short) transaction: the first gathers
-- its values, each next changes up to p_limit rows (other rows' mentions first, then its own),
-- the last records subject.anonymised. Call until `done`. p_dead_letters: what the caller
-- cleared of it outside the database (Redis), added to the counts; p_by: who asked;
-- p_entity_types: the caller's AUDITQ_SUBJECT_ENTITY_TYPES, narrowed to the policy's.
CREATE FUNCTION public.auditq_erase_subject(
    p_subject text, p_pseudonym text, p_reason text DEFAULT NULL,
    p_dead_letters bigint DEFAULT 0, p_by jsonb DEFAULT NULL, p_limit integer DEFAULT 1000,
    p_entity_types text[] DEFAULT NULL
) RETURNS TABLE (changed bigint, done boolean, action_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state  public.erased_subject;
    v_pinned text[] := (SELECT p.subject_entity_types FROM public.store_policy p);
    -- The caller's configured types, within what the owner pinned (never wider).
    v_types  text[] := CASE
        WHEN v_pinned IS NULL THEN coalesce(p_entity_types, '{user}'::text[])
        ELSE coalesce((SELECT array_agg(t) FROM unnest(v_pinned) AS t
                       WHERE p_entity_types IS NULL OR t = ANY(p_entity_types)), '{}'::text[])
        END;
    v_values text[];
    v_names  text;
    v_step   record;
BEGIN
    IF coalesce(p_subject, ''::text) = '' OR length(p_subject) > 1024
       OR p_subject ~ '^anon_[0-9a-f]{32}$'::text
       OR coalesce(p_pseudonym, ''::text) !~ '^anon_[0-9a-f]{32}$'::text
       OR coalesce(p_limit, 0) NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'auditq_erase_subject: a subject id, its pseudonym, a batch of 1 to 100000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_state FROM public.erased_subject e WHERE e.pseudonym = p_pseudonym FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'erasure of % was not registered', p_pseudonym
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE public.erased_subject e SET dead_letters = e.dead_letters + greatest(p_dead_letters, 0)
    WHERE e.pseudonym = p_pseudonym;
    IF v_state.phase = 'done' THEN
        RETURN QUERY SELECT 0::bigint, true, NULL::bigint;
        RETURN;
    END IF;
    IF v_state.phase = 'start' THEN
        -- A pseudonym that already names an erased subject is not given to another one's
        -- rows: an erasure left done leaves no row with the id, so rows with it here are
        -- another subject's (the database cannot check the keyed digest itself: see docs).
        IF v_state.first_action IS NOT NULL AND EXISTS (
               SELECT FROM public.audit_log a WHERE a.actor_id = p_subject
               UNION ALL
               SELECT FROM public.audit_log a
               WHERE a.entity_id = p_subject AND a.entity_type = ANY(v_types)) THEN
            RAISE EXCEPTION 'pseudonym % already names an erased subject', p_pseudonym
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        DELETE FROM public.erasure_value v WHERE v.pseudonym = p_pseudonym;
        -- Each value is cleared everywhere unless it is too common (a short or numeric id,
        -- a common word), or a client address another actor used too, or a loopback or
        -- private one: those only in the subject's own rows.
        INSERT INTO public.erasure_value (pseudonym, value, everywhere)
        SELECT p_pseudonym, x.v, bool_and(x.everywhere) FROM (
            SELECT p_subject AS v, NOT public.auditq_erase_value_is_common(p_subject) AS everywhere
            UNION ALL
            SELECT u.v, NOT public.auditq_erase_value_is_common(u.v)
            FROM public.audit_log a, unnest(ARRAY[a.actor_name, a.actor_email]) AS u(v)
            WHERE a.actor_id = p_subject
            UNION ALL
            SELECT a.entity_name, NOT public.auditq_erase_value_is_common(a.entity_name)
            FROM public.audit_log a
            WHERE a.entity_id = p_subject AND a.entity_type = ANY(v_types)
            UNION ALL
            SELECT host(i.ip),
                   NOT (i.ip << ANY ('{127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,::1/128,fc00::/7,fe80::/10}'::inet[])
                        OR i.ip = '::1'::inet
                        OR EXISTS (SELECT FROM public.audit_log o
                                   WHERE o.ip = i.ip AND o.actor_id IS DISTINCT FROM p_subject))
            FROM (SELECT DISTINCT a.ip FROM public.audit_log a
                  WHERE a.actor_id = p_subject AND a.ip IS NOT NULL) i
        ) x WHERE x.v IS NOT NULL AND x.v <> ''::text
        GROUP BY x.v
        ON CONFLICT (pseudonym, value) DO UPDATE SET everywhere = excluded.everywhere;
        UPDATE public.erased_subject e SET phase = 'mentions', after_seq = 0
        WHERE e.pseudonym = p_pseudonym;
        v_state.phase := 'mentions';
        v_state.after_seq := 0;
    END IF;
    SELECT array_agg(v.value ORDER BY length(v.value) DESC, v.value) INTO v_values
    FROM public.erasure_value v WHERE v.pseudonym = p_pseudonym;
    IF v_state.phase IN ('mentions', 'subject') THEN
        SELECT * INTO v_step FROM public.auditq_anonymise_rows(
            p_subject, p_pseudonym, v_types,
            CASE WHEN v_state.phase = 'subject' THEN v_values
                 ELSE ARRAY(SELECT v.value FROM public.erasure_value v
                            WHERE v.pseudonym = p_pseudonym AND v.everywhere
                            ORDER BY length(v.value) DESC, v.value) END,
            v_state.phase = 'mentions',
            v_state.after_seq, p_limit) r;
        IF v_step.action_id IS NOT NULL THEN  -- a batch done; more may follow
            UPDATE public.erased_subject e SET
                rows = e.rows + v_step.changed, after_seq = v_step.last_seq,
                first_action = coalesce(e.first_action, v_step.action_id),
                last_action = v_step.action_id
            WHERE e.pseudonym = p_pseudonym;
            RETURN QUERY SELECT v_step.changed, false, v_step.action_id;
            RETURN;
        END IF;
        IF v_state.phase = 'mentions' THEN  -- no more mentions: the subject's own rows next
            UPDATE public.erased_subject e SET phase = 'subject', after_seq = 0
            WHERE e.pseudonym = p_pseudonym;
            RETURN QUERY SELECT 0::bigint, false, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    -- Finished: the state, the values forgotten, and the event (never the subject's values).
    v_names := public.auditq_erase_pattern(array_remove(v_values, p_subject));
    DELETE FROM public.erasure_value v WHERE v.pseudonym = p_pseudonym;
    UPDATE public.erased_subject e SET phase = 'done', state = 'done', finished_at = now(),
        after_seq = 0
    WHERE e.pseudonym = p_pseudonym RETURNING e.* INTO v_state;
    PERFORM public.auditq_store_event(jsonb_build_object(
        'id', public.auditq_new_event_id(), 'action', 'subject.anonymised',
        'actor', p_by -> 'actor', 'request', p_by -> 'request',
        'source', coalesce(p_by ->> 'source', 'auditq-api'::text),
        'entity', jsonb_build_object('type', 'subject', 'id', p_pseudonym),
        'metadata', jsonb_strip_nulls(jsonb_build_object(
            'pseudonym', p_pseudonym, 'rows', v_state.rows,
            'dead_letters', v_state.dead_letters,
            'store_actions', CASE WHEN v_state.first_action IS NULL THEN NULL
                                  ELSE jsonb_build_object('first', v_state.first_action,
                                                          'last', v_state.last_action) END,
            'reason', public.auditq_erase_text(nullif(left(p_reason, 1024), ''::text), v_names,
                                               public.auditq_erase_pattern(ARRAY[p_subject]),
                                               p_pseudonym)))), 'api'::text);
    RETURN QUERY SELECT 0::bigint, true, NULL::bigint;
END;
$$;

-- The API adds the digests of a subject being erased (it holds the key); at most one id and
-- 1,000 values per subject. Returns the digests the subject now has.
CREATE FUNCTION public.auditq_register_mentions(
    p_pseudonym text, p_digests bytea[], p_anchors bytea[], p_words integer[], p_is_id boolean[],
    p_person_only boolean[]
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM public.erased_subject e WHERE e.pseudonym = p_pseudonym) THEN
        RAISE EXCEPTION 'erasure of % was not registered', left(p_pseudonym, 64)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO public.erased_mention (pseudonym, digest, anchor, words, is_id, person_only)
    SELECT p_pseudonym, d, a, w, i, coalesce(o, false)
    FROM unnest(p_digests, p_anchors, p_words, p_is_id, p_person_only) AS u(d, a, w, i, o)
    ON CONFLICT DO NOTHING;
    SELECT count(*) INTO v_count FROM public.erased_mention m WHERE m.pseudonym = p_pseudonym;
    IF v_count > 1001 OR (SELECT count(*) FROM public.erased_mention m
                          WHERE m.pseudonym = p_pseudonym AND m.is_id) > 1 THEN
        RAISE EXCEPTION 'at most one id and 1000 values per erased subject'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_count;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- 3.8 Destinations

-- Queue a statement's rows for delivery, in the inserting transaction.
CREATE FUNCTION public.auditq_queue_delivery() RETURNS trigger
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

-- Pruning the delivery log (the maintenance job): an entry goes once every destination has
-- passed it AND its rows are gone (past retention). An entry whose rows are still stored
-- stays though every destination passed it: a backfill (a new destination's `--since`, or
-- `destinations backfill`) finds history only through its entries. Oldest first, stopping at
-- the first entry that stays (retention removes the oldest rows first), so a call with
-- nothing to prune reads one entry; at most p_limit entries a call.
CREATE FUNCTION public.auditq_prune_delivery_log(p_limit integer) RETURNS bigint
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


-- =======================================================================================
-- 4. Indexes (after the functions: the mention index is over an expression of two)
-- =======================================================================================

CREATE INDEX audit_log_entity_idx ON public.audit_log (entity_type, entity_id, ts DESC);
CREATE INDEX audit_log_actor_idx ON public.audit_log (actor_id, ts DESC);
CREATE INDEX audit_log_action_idx ON public.audit_log (action, ts DESC);
CREATE INDEX audit_log_request_idx ON public.audit_log (request_id);
CREATE INDEX audit_log_tenant_idx ON public.audit_log (tenant, ts DESC);
CREATE INDEX audit_log_ts_idx ON public.audit_log (ts DESC, id DESC);
CREATE INDEX audit_log_search_idx ON public.audit_log USING gin (search);
-- The live tail (SSE) reads rows in arrival order, which is not `ts` order for late events.
CREATE INDEX audit_log_received_idx ON public.audit_log (received_at, id);
CREATE INDEX audit_log_seq_idx ON public.audit_log (seq);
-- Erasure: every word of the texts an erasure clears in other people's rows (3.7).
CREATE INDEX audit_log_mention_idx ON public.audit_log USING gin (
    to_tsvector('simple'::regconfig, public.auditq_mention_text(
        entity_name, path, metadata, changes, presentation -> 'params')));
-- Console searches (docs/admin-api.md, "Filters"): a metadata condition alone (no time
-- range) is served by containment, `metadata @> …`; an actor's name by its lower-cased
-- prefix, compared byte-wise (C) so a prefix is one range whatever the collation.
CREATE INDEX audit_log_metadata_idx ON public.audit_log USING gin (metadata jsonb_path_ops);
CREATE INDEX audit_log_actor_name_idx ON public.audit_log ((lower(actor_name) COLLATE "C"), ts DESC);

CREATE INDEX seal_checkpoint_sealed_idx ON public.seal_checkpoint (sealed_at);
CREATE INDEX row_replacement_seq_idx ON public.row_replacement (seq);
CREATE INDEX tlog_batch_row_seqs_idx ON public.tlog_batch USING gist (row_seqs);
CREATE INDEX tlog_batch_action_ids_idx ON public.tlog_batch USING gist (action_ids);
CREATE INDEX tlog_witness_status_url_idx ON public.tlog_witness_status (url, at DESC);
CREATE INDEX tlog_erasure_leaf_idx ON public.tlog_erasure (leaf_index, action_leaf);
CREATE UNIQUE INDEX api_token_name_active_idx ON public.api_token (name) WHERE revoked_at IS NULL;
CREATE INDEX delivery_log_stored_idx ON public.delivery_log (stored_at);


-- =======================================================================================
-- 5. Triggers
-- =======================================================================================

CREATE TRIGGER audit_log_queue_seal
    AFTER INSERT ON public.audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_queue_seal();

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON public.audit_log
    FOR EACH ROW EXECUTE FUNCTION public.auditq_audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON public.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_audit_log_append_only();

CREATE TRIGGER audit_log_queue_rollup
    AFTER INSERT ON public.audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_queue_rollup();

CREATE TRIGGER audit_log_queue_delivery
    AFTER INSERT ON public.audit_log REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_queue_delivery();

CREATE TRIGGER store_policy_stamp
    BEFORE UPDATE OR DELETE ON public.store_policy
    FOR EACH ROW EXECUTE FUNCTION public.auditq_policy_stamp();
CREATE TRIGGER store_policy_record
    AFTER UPDATE ON public.store_policy
    FOR EACH ROW EXECUTE FUNCTION public.auditq_policy_record();
CREATE TRIGGER store_policy_no_truncate
    BEFORE TRUNCATE ON public.store_policy
    FOR EACH STATEMENT EXECUTE FUNCTION public.auditq_append_only();

-- Checkpoints, store actions, replacements and the transparency log are append-only (for
-- everyone but a superuser skipping triggers, which verify then catches).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seal_checkpoint', 'store_action', 'row_replacement', 'tlog_batch',
                             'tlog_tile', 'tlog_checkpoint', 'tlog_cosignature', 'tlog_erasure'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON public.%I FOR EACH ROW '
                       'EXECUTE FUNCTION public.auditq_append_only()', t || '_append_only', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION public.auditq_append_only()', t || '_no_truncate', t);
    END LOOP;
END;
$$;


-- =======================================================================================
-- 6. Privileges (docs/integrity.md, "Roles"). The worker and the API connect as the runtime
-- roles, never as the owner. Neither owns anything, so neither can alter, drop, detach or
-- disable anything; what they write beyond rows, they write through definer functions.
-- =======================================================================================

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

-- Nothing for anyone but the owner, then what each role needs. (The default partition and
-- the monthly ones are reached through audit_log only.)
REVOKE ALL ON public.audit_log, public.seal_pending, public.seal_checkpoint, public.store_action,
    public.row_replacement, public.integrity_verification, public.tlog_batch, public.tlog_tile,
    public.tlog_checkpoint, public.tlog_cosignature, public.tlog_seal_stop,
    public.tlog_witness_status, public.tlog_erasure, public.store_policy, public.rollup_pending,
    public.rollup_day, public.rollup_day_tenant, public.rollup_day_actor, public.api_token,
    public.api_secret, public.erased_subject, public.erasure_value, public.erased_mention,
    public.delivery_log, public.destination, public.destination_secret,
    public.destination_state, public.auditq_schema_version, public.provenance_key
    FROM PUBLIC, auditq_worker, auditq_api;
-- The API writes tokens and verification results only through the functions of 3.6.
-- The API changes destinations only through the functions of 3.6 too.
REVOKE ALL ON SEQUENCE public.audit_log_seq, public.store_action_seq, public.api_token_id_seq,
    public.integrity_verification_id_seq, public.destination_id_seq
    FROM PUBLIC, auditq_worker, auditq_api;
-- Functions: only those granted below (the erasure batch function trusts its arguments and
-- is the owner's alone). The pure helpers (erasure's text functions, mention words, the row
-- digest) and the append-only trigger functions keep PostgreSQL's default.
REVOKE ALL ON FUNCTION public.auditq_store_event(jsonb, text), public.auditq_new_event_id(),
    public.auditq_queue_seal(), public.auditq_record_action(text, jsonb, int8multirange),
    public.auditq_ensure_partition(date), public.auditq_policy_stamp(),
    public.auditq_policy_record(), public.auditq_retention_cutoff(),
    public.auditq_drop_partition(text), public.auditq_delete_expired_default_rows(),
    public.auditq_apply_retention(integer), public.auditq_queue_rollup(),
    public.auditq_rollup_rows(int8multirange, integer), public.auditq_rollup_fold(integer),
    public.auditq_record_admin_event(jsonb),
    public.auditq_admin_event(text, jsonb, text, text, jsonb),
    public.auditq_create_token(text, text, bytea, jsonb),
    public.auditq_revoke_token(text, jsonb),
    public.auditq_record_verification(timestamptz, jsonb, jsonb),
    public.auditq_anonymise_rows(text, text, text[], text[], boolean, bigint, integer),
    public.auditq_register_erasure(text),
    public.auditq_erase_subject(text, text, text, bigint, jsonb, integer, text[]),
    public.auditq_register_mentions(text, bytea[], bytea[], integer[], boolean[], boolean[]),
    public.auditq_queue_delivery(), public.auditq_prune_delivery_log(integer),
    public.auditq_add_destination(text, text, text, text, text, jsonb, jsonb, text, timestamptz,
                                  text, jsonb),
    public.auditq_update_destination(bigint, text, text, text, jsonb, jsonb, boolean, text,
                                     boolean, text[], jsonb),
    public.auditq_set_destination_paused(text, boolean, jsonb),
    public.auditq_remove_destination(text, jsonb),
    public.auditq_backfill_destination(bigint, timestamptz, jsonb)
    FROM PUBLIC, auditq_worker, auditq_api;

-- The worker: store rows (never choosing their seq), seal them, keep partitions.
GRANT SELECT ON public.audit_log TO auditq_worker;
GRANT INSERT (id, ts, received_at, action, category, severity, outcome,
              actor_id, actor_type, actor_name, actor_email,
              entity_type, entity_id, entity_name, tenant,
              request_id, ip, user_agent, method, path, status, duration_ms,
              changes, metadata, presentation, source, received_via)
    ON public.audit_log TO auditq_worker;
GRANT USAGE ON SEQUENCE public.audit_log_seq TO auditq_worker;
GRANT SELECT, DELETE ON public.seal_pending TO auditq_worker;
GRANT SELECT, INSERT ON public.seal_checkpoint TO auditq_worker;
GRANT SELECT ON public.store_action, public.row_replacement TO auditq_worker;
GRANT SELECT, INSERT ON public.tlog_batch, public.tlog_tile, public.tlog_checkpoint,
    public.tlog_cosignature, public.tlog_seal_stop, public.tlog_witness_status,
    public.tlog_erasure TO auditq_worker;
-- Partitions made ahead, and retention: the worker only asks to apply the store's policy.
GRANT EXECUTE ON FUNCTION public.auditq_ensure_partition(date), public.auditq_apply_retention(integer)
    TO auditq_worker;
-- The statistics rollup: the worker folds through the definer function only; it may not
-- write the counts themselves.
GRANT EXECUTE ON FUNCTION public.auditq_rollup_fold(integer) TO auditq_worker;
-- Erasure: later events of an erased subject are stored pseudonymised and cleared.
GRANT SELECT ON public.erased_subject, public.erased_mention TO auditq_worker;
-- The worker delivers: it reads the destinations (and their secrets, to sign) and moves
-- positions and health; it cannot add, change or remove a destination.
GRANT SELECT ON public.delivery_log, public.destination, public.destination_secret
    TO auditq_worker;
GRANT SELECT, UPDATE ON public.destination_state TO auditq_worker;
-- It prunes the delivery log only through its function (3.8).
GRANT EXECUTE ON FUNCTION public.auditq_prune_delivery_log(integer) TO auditq_worker;
-- The provenance key (the view), and only it: the worker checks the API's tags with it.
GRANT SELECT ON public.store_policy, public.provenance_key TO auditq_worker;

-- The API and the admin commands: read the store (never the erasure's values), and write
-- through the functions of 3.6 and 3.7 only.
GRANT SELECT ON public.audit_log, public.seal_pending, public.seal_checkpoint,
    public.store_action, public.row_replacement, public.integrity_verification,
    public.tlog_batch, public.tlog_tile, public.tlog_checkpoint, public.tlog_cosignature,
    public.tlog_seal_stop, public.tlog_witness_status, public.tlog_erasure,
    public.store_policy, public.provenance_key, public.rollup_pending, public.rollup_day,
    public.rollup_day_tenant, public.rollup_day_actor, public.api_token, public.api_secret,
    public.erased_subject, public.erased_mention, public.delivery_log
    TO auditq_api;
-- `auditq migrate --status` also works with the API's URL (.auditq/env).
GRANT SELECT ON public.auditq_schema_version TO auditq_api;
GRANT EXECUTE ON FUNCTION public.auditq_record_admin_event(jsonb),
    public.auditq_create_token(text, text, bytea, jsonb), public.auditq_revoke_token(text, jsonb),
    public.auditq_record_verification(timestamptz, jsonb, jsonb)
    TO auditq_api;
GRANT EXECUTE ON FUNCTION public.auditq_register_erasure(text),
    public.auditq_erase_subject(text, text, text, bigint, jsonb, integer, text[]) TO auditq_api;
GRANT EXECUTE ON FUNCTION
    public.auditq_register_mentions(text, bytea[], bytea[], integer[], boolean[], boolean[])
    TO auditq_api;
-- The API and the admin commands read destinations (and a secret, to send the test event
-- themselves) and change them only through the functions of 3.6, each change recorded.
GRANT SELECT ON public.destination, public.destination_secret, public.destination_state
    TO auditq_api;
GRANT EXECUTE ON FUNCTION
    public.auditq_add_destination(text, text, text, text, text, jsonb, jsonb, text, timestamptz,
                                  text, jsonb),
    public.auditq_update_destination(bigint, text, text, text, jsonb, jsonb, boolean, text,
                                     boolean, text[], jsonb),
    public.auditq_set_destination_paused(text, boolean, jsonb),
    public.auditq_remove_destination(text, jsonb),
    public.auditq_backfill_destination(bigint, timestamptz, jsonb)
    TO auditq_api;


-- =======================================================================================
-- 7. Seed rows
-- =======================================================================================

-- The store's policy: one row, keeping every row until the owner sets a retention.
INSERT INTO public.store_policy (singleton) VALUES (true);

-- gen_random_uuid() draws from the server's strong random source: 2 x 122 random bits.
INSERT INTO public.api_secret (name, secret)
VALUES ('cursor', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
       -- The key of provenance tags (service/queue/jobs.py): the API vouches for http:<token>
       -- and api jobs with it, the worker checks them.
       ('provenance', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
