-- Migration 0011: destinations change only through definer functions that record what they
-- did (issue 24, least privilege): the same functions as schema.sql's "Destinations" block of
-- 3.6 (after auditq_record_verification), and the grants of its section 6. The API role kept
-- INSERT, UPDATE and DELETE on the destinations tables: a stolen API password could pause,
-- remove or re-point a destination, or move its position, with no admin record. Idempotent.

-- Destinations (contract §11): added, changed, paused, resumed, moved back and removed only
-- here, each change stored with its destination.* event in one transaction (a stolen API
-- password cannot stop or re-point the record's streaming unseen). p_by as for tokens; the
-- secret goes to its table, the event says only whether there is one. Of the URL an event
-- keeps the host (a URL may carry a key), of the filter whether there is one (it may name
-- an erased subject; the API's own records are cleared of those, these are not).
CREATE OR REPLACE FUNCTION public.auditq_destination_host(p_url text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)')
$$;

CREATE OR REPLACE FUNCTION public.auditq_destination_event(
    p_action text, p_name text, p_by jsonb, p_metadata jsonb
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.auditq_store_event(jsonb_build_object(
        'id', public.auditq_new_event_id(), 'action', p_action, 'severity', 'notice',
        'actor', p_by -> 'actor', 'request', p_by -> 'request',
        'source', coalesce(p_by ->> 'source', 'auditq-api'::text),
        'entity', jsonb_build_object('type', 'destination', 'id', left(p_name, 256)),
        'metadata', p_metadata), 'api'::text);
END;
$$;

-- A new destination starts at the oldest transaction still running (every row committed
-- from then on is sent; when none is older than this one, just after this one's own record),
-- or just before the first entry stored at or after p_since. Its id, or null (and no event)
-- when the name is taken.
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
    PERFORM public.auditq_destination_event('destination.created'::text, p_name, p_by,
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
    PERFORM public.auditq_destination_event(
        CASE WHEN p_changed IS DISTINCT FROM ARRAY['paused'::text] THEN 'destination.updated'::text
             WHEN p_paused THEN 'destination.paused'::text
             ELSE 'destination.resumed'::text END,
        v_name, p_by, jsonb_build_object('name', v_name, 'changed', to_jsonb(p_changed)));
    RETURN true;
END;
$$;

-- Pause or resume by name; false when there is no destination of that name.
CREATE OR REPLACE FUNCTION public.auditq_set_destination_paused(
    p_name text, p_paused boolean, p_by jsonb
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.destination SET paused = p_paused, updated_at = now() WHERE name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM public.auditq_destination_event(
        CASE WHEN p_paused THEN 'destination.paused'::text ELSE 'destination.resumed'::text END,
        p_name, p_by, jsonb_build_object('name', p_name));
    RETURN true;
END;
$$;

-- Remove a destination, its secret and position; false when there is none of that name.
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
    PERFORM public.auditq_destination_event('destination.removed'::text, p_name, p_by,
        jsonb_build_object('name', p_name, 'type', v_kind,
                           'host', public.auditq_destination_host(v_url)));
    RETURN true;
END;
$$;

-- Send again every row stored since p_since: the position moves back to just before the
-- first entry stored at or after it (or to now). The new position's xid (its seq is -1), or
-- null when there is no destination of that id.
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
    PERFORM public.auditq_destination_event('destination.backfilled'::text, v_name, p_by,
        jsonb_build_object('name', v_name, 'since', p_since));
    RETURN v_xid::text;
END;
$$;

REVOKE ALL ON FUNCTION public.auditq_destination_event(text, text, jsonb, jsonb),
    public.auditq_add_destination(text, text, text, text, text, jsonb, jsonb, text, timestamptz,
                                  text, jsonb),
    public.auditq_update_destination(bigint, text, text, text, jsonb, jsonb, boolean, text,
                                     boolean, text[], jsonb),
    public.auditq_set_destination_paused(text, boolean, jsonb),
    public.auditq_remove_destination(text, jsonb),
    public.auditq_backfill_destination(bigint, timestamptz, jsonb)
    FROM PUBLIC, auditq_worker, auditq_api;
REVOKE ALL ON public.destination, public.destination_secret, public.destination_state
    FROM auditq_api;
GRANT SELECT ON public.destination, public.destination_secret, public.destination_state
    TO auditq_api;
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, auditq_worker, auditq_api',
                   pg_get_serial_sequence('public.destination', 'id'));
END;
$$;
GRANT EXECUTE ON FUNCTION
    public.auditq_add_destination(text, text, text, text, text, jsonb, jsonb, text, timestamptz,
                                  text, jsonb),
    public.auditq_update_destination(bigint, text, text, text, jsonb, jsonb, boolean, text,
                                     boolean, text[], jsonb),
    public.auditq_set_destination_paused(text, boolean, jsonb),
    public.auditq_remove_destination(text, jsonb),
    public.auditq_backfill_destination(bigint, timestamptz, jsonb)
    TO auditq_api;
