-- 0000: the first released schema (schema.sql of commit 56d36f4), kept as the base the
-- numbered migrations start from. Never applied by `auditq migrate`: a store without the
-- version table counts as this; a new store gets schema.sql. The rest is kept as released.

-- auditq storage. Idempotent: apply it as often as you like (`auditq migrate`).
-- PostgreSQL >= 14.

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

-- Append-only: rows change only through the retention and anonymisation paths, which set
-- `auditq.maintenance` to 'on' inside their own transaction.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('auditq.maintenance', true), '') = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'use the retention or anonymisation path';
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
VALUES ('cursor', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
ON CONFLICT (name) DO NOTHING;
