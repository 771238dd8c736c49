-- Migration 0008: the indexes of the console's searches: a metadata condition by containment
-- (GIN, jsonb_path_ops) and an actor's name by its lower-cased prefix. The same statements as
-- schema.sql's block "Console searches". Idempotent: plain forward SQL. On a large store the
-- indexes take a while to build (each partition's own, made from the partitioned parent).

CREATE INDEX IF NOT EXISTS audit_log_metadata_idx ON public.audit_log
    USING gin (metadata jsonb_path_ops);
CREATE INDEX IF NOT EXISTS audit_log_actor_name_idx ON public.audit_log
    ((lower(actor_name) COLLATE "C"), ts DESC);
