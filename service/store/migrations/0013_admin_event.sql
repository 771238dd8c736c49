-- Migration 0013: one function stores the event of a token's or a destination's change,
-- auditq_admin_event (schema.sql 3.6, before the token functions); the token functions
-- built the same event inline, the destination functions through auditq_destination_event
-- (migration 0011), which goes. The rows stored are the same. Idempotent.

CREATE OR REPLACE FUNCTION public.auditq_admin_event(
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

CREATE OR REPLACE FUNCTION public.auditq_create_token(
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

CREATE OR REPLACE FUNCTION public.auditq_revoke_token(p_name text, p_by jsonb) RETURNS bytea
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

CREATE OR REPLACE FUNCTION public.auditq_add_destination(
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

CREATE OR REPLACE FUNCTION public.auditq_update_destination(
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

CREATE OR REPLACE FUNCTION public.auditq_set_destination_paused(
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

CREATE OR REPLACE FUNCTION public.auditq_remove_destination(p_name text, p_by jsonb)
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

CREATE OR REPLACE FUNCTION public.auditq_backfill_destination(
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

DROP FUNCTION IF EXISTS public.auditq_destination_event(text, text, jsonb, jsonb);
REVOKE ALL ON FUNCTION public.auditq_admin_event(text, jsonb, text, text, jsonb)
    FROM PUBLIC, auditq_worker, auditq_api;
