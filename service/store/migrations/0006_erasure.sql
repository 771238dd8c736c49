-- Migration 0006: erasure that finds every copy of the subject and nothing that is not
-- theirs (docs/erasure.md). From the schema of least privilege (0002): the mention index
-- (words of URLs, paths, host names, emails) replaces the params index; values too common to
-- clear everywhere and shared client addresses stay in other people's rows; erased subjects'
-- keyed value digests let workers clear later events. Idempotent: plain forward SQL.
-- The same statements as schema.sql's block "Erasure that finds every copy" and its
-- changed functions auditq_anonymise_rows and auditq_erase_subject.

-- =======================================================================================
-- Erasure that finds every copy and nothing else (docs/erasure.md, "What is looked for").
-- The full-text column keeps URLs, paths, host names and emails as single tokens, so the
-- subject's id inside `/users/alice/x` is not a word of it. The mention index sees every
-- run of letters and digits of the texts an erasure clears (entity name, request path,
-- metadata, changes, presentation params) as a word of its own: every value of the subject
-- found literally in a text is a run of words of it, so the index finds every such row.
-- A value too short or too common to clear everywhere, and a client address other actors
-- share, are cleared only in the subject's own rows.
-- =======================================================================================

-- The words of a text: every run of letters and digits, anything else a space.
CREATE OR REPLACE FUNCTION public.auditq_mention_words(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT regexp_replace(t, '[^[:alnum:]]+', ' ', 'g')
$$;

-- The words of the texts an erasure clears in another row. JSON's own escapes (`\n`,
-- `\u0001`, `\\`, `\"`) are spaces first, so `"a\nalice"` has the word `alice`.
CREATE OR REPLACE FUNCTION public.auditq_mention_text(
    p_entity_name text, p_path text, p_metadata jsonb, p_changes jsonb, p_params jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT public.auditq_mention_words(regexp_replace(
    concat_ws(' '::text, p_entity_name, p_path, p_metadata::text, p_changes::text, p_params::text),
    '\\(u[0-9a-fA-F]{4}|.)', ' ', 'g'))
$$;

-- The mention index covers presentation params (earlier releases had an index of their own):
-- dropped first, so the partitions' new indexes take the names it leaves.
DROP INDEX IF EXISTS public.audit_log_params_search_idx;
CREATE INDEX IF NOT EXISTS audit_log_mention_idx ON public.audit_log USING gin (
    to_tsvector('simple'::regconfig, public.auditq_mention_text(
        entity_name, path, metadata, changes, presentation -> 'params')));

-- Too short or too common to clear from other people's rows: it would match unrelated text
-- (`42` in "42 items", `admin` in any sentence). Such a value is cleared only in the
-- subject's own rows (docs/erasure.md, "Values too common to look for").
CREATE OR REPLACE FUNCTION public.auditq_erase_value_is_common(v text) RETURNS boolean
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
CREATE OR REPLACE FUNCTION public.auditq_erase_person_fields(
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

-- Whether a client address may be cleared from other people's rows: not when another actor
-- used it too (a NAT, a load balancer, a proxy), nor a loopback or private address.
ALTER TABLE public.erasure_value
    ADD COLUMN IF NOT EXISTS everywhere boolean NOT NULL DEFAULT true;
-- Later events (contract §9): workers clear other people's events of an erased subject's id,
-- names and emails. The store keeps no value of the subject, only a keyed digest of each
-- (service/mentions.py: BLAKE2b keyed with the subject key, a file no database role reads),
-- of its first word, and its number of words; the replacement is the pseudonym for the id,
-- null for a name or email. Values too common to clear everywhere are not among them.
CREATE TABLE IF NOT EXISTS public.erased_mention (
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

-- The API adds the digests of a subject being erased (it holds the key); at most one id and
-- 1,000 values per subject. Returns the digests the subject now has.
CREATE OR REPLACE FUNCTION public.auditq_register_mentions(
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

REVOKE ALL ON public.erased_mention FROM PUBLIC, auditq_worker, auditq_api;
GRANT SELECT ON public.erased_mention TO auditq_worker, auditq_api;
REVOKE ALL ON FUNCTION
    public.auditq_register_mentions(text, bytea[], bytea[], integer[], boolean[], boolean[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    public.auditq_register_mentions(text, bytea[], bytea[], integer[], boolean[], boolean[])
    TO auditq_api;
-- (end of erasure that finds every copy)

-- One batch of an erasure, in the caller's transaction; returns the rows changed, the last
-- seq looked at and the store_action recording the batch (null when nothing matched).
-- p_mentions false: the subject's own rows (actor, or entity of a type in p_entity_types):
-- ids -> pseudonym; names, emails, client IP, user agent removed; texts cleared of every
-- value. p_mentions true: other rows whose texts hold one of p_values (the values to clear
-- everywhere; the id only when it is one of them), found with the mention index and checked
-- literally, in seq order after p_after: entity name, path, metadata, changes, presentation
-- cleared.
CREATE OR REPLACE FUNCTION public.auditq_anonymise_rows(
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
        FROM (SELECT a.seq, public.audit_row_digest(a) AS d FROM public.audit_log a
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
        FROM ((SELECT a.seq, public.audit_row_digest(a) AS d FROM public.audit_log a
               WHERE a.actor_id = p_subject ORDER BY a.ts DESC LIMIT p_limit)
              UNION
              (SELECT a.seq, public.audit_row_digest(a) AS d FROM public.audit_log a
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
        RETURNING a.seq, public.audit_row_digest(a) AS d
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

-- One step of the subject's erasure, in the caller's (short) transaction: the first gathers
-- its values, each next changes up to p_limit rows (other rows' mentions first, then its own),
-- the last records subject.anonymised. Call until `done`. p_dead_letters: what the caller
-- cleared of it outside the database (Redis), added to the counts; p_by: who asked;
-- p_entity_types: the caller's AUDITQ_SUBJECT_ENTITY_TYPES, narrowed to the policy's.
DROP FUNCTION IF EXISTS public.auditq_erase_subject(text, text, text, bigint, jsonb, integer);
CREATE OR REPLACE FUNCTION public.auditq_erase_subject(
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
