-- Oncely's functions in PostgreSQL (schema version 5), created with the schema.
--
-- `@schema@` is the schema's name and `@lock_key@` the first half of every advisory
-- lock key of the schema (see `lock_key` in mod.rs); Oncely puts them in before it
-- runs this file. Every statement is `CREATE OR REPLACE`, so a migration may run it
-- again.
--
-- `mark_ids` is the one place a check or a mark is decided on PostgreSQL: the
-- tracker calls it from its pool (in autocommit: one round trip per call), the
-- in-transaction API from the caller's transaction, and the public functions below
-- it (`check_and_mark`, `check_and_mark_bytes`, `check`, `check_bytes`) for callers
-- in any language. It decides as `decide.rs` does for the embedded engine: the
-- model test runs both engines against one exact model. `set_checkpoint`,
-- `set_checkpoint_if` and `checkpoint` keep consumers' positions beside the marks;
-- `forget` and `forget_bytes` (through `forget_ids`) forget IDs as the library's
-- `forget` does.
-- (Claims stay with the library and the daemon: their decisions are `decide.rs`'s,
-- on the library's side of one transaction.)

-- An owner token's fingerprint as stored: the first 8 bytes of
-- SHA-256(namespace seed, big-endian || token), as a bigint. Tokens never reach the
-- tables; the seed is secret, so nobody can aim a token at another's fingerprint.
CREATE OR REPLACE FUNCTION @schema@.owner_fp(p_seed bigint, p_owner text)
RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT ('x' || encode(substr(sha256(int8send(p_seed) || convert_to(p_owner, 'UTF8')), 1, 8),
                          'hex'))::bit(64)::bigint
$fn$;

-- Checks, or checks and marks, distinct IDs in a namespace.
--
-- `p_ids` are distinct and in ascending order (as bytea compares): the order the
-- locks are taken in. Owner tokens: `p_owners`, one token (or NULL) per ID, so that
-- calls of several callers may share one statement; else `p_owner` for every ID
-- (or none).
--
-- Answers one row per ID that is not `new` (`idx` its 1-based position in `p_ids`;
-- `verdict` one of duplicate, replayed, in_progress with `until_ms`,
-- probable_duplicate), or instead a single status row with `idx` 0, changing
-- nothing:
--   unknown  no such namespace;
--   stale    `p_ns`/`p_version` (the caller's cached ring) are not the namespace's
--            (`until_ms` carries its version): refresh and call again;
--   full     the open generation holds `capacity` IDs (asked by a mark, or with
--            `p_rotate`): it must rotate first;
--   due      `p_rotate`, and the open generation's span has passed.
--
-- The locks, in order: the namespace's advisory lock, shared (rotation takes it
-- exclusively, so the ring cannot change under the call); at REPEATABLE READ and
-- SERIALIZABLE a share lock on the ring row, which fails (40001) when the
-- transaction's snapshot predates a change of the ring, so that a stale view of it
-- is never acted on; then the open generation's rows, taken in ID order (sorted
-- inserts, and `FOR UPDATE ... ORDER BY`), so that overlapping batches wait for one
-- another in one order and never deadlock. `lock_timeout` bounds every wait.
--
-- Hints, given by a tracker that holds the namespace's sealed filters (with `p_ns`
-- and `p_version`): `p_look_idx`/`p_look_gen` are the (ID, sealed exact generation)
-- pairs whose filter hit, `p_look_all` the sealed generations with no filter yet
-- (every ID is looked up there), `p_bloom` the IDs a Bloom-only filter holds.
-- Without hints (`p_ns` NULL), every sealed generation that keeps its exact table is
-- looked up for every ID, and Bloom-only generations are not consulted: this
-- function cannot read Bloom filters.
--
-- Every statement here costs about what the insert itself does (a single ID's call
-- measured at 0.5x a bare single-row insert with all of them run), so the common
-- cases skip what they do not need: one ID no filter holds is one insert and its
-- count; a batch no filter holds, one insert of all of it.
CREATE OR REPLACE FUNCTION @schema@.mark_ids(
    p_name text,
    p_ns integer,
    p_version bigint,
    p_ids bytea[],
    p_owner text,
    p_owners text[],
    p_check boolean,
    p_rotate boolean,
    p_now bigint,
    p_look_idx integer[],
    p_look_gen bigint[],
    p_look_all bigint[],
    p_bloom integer[],
    p_consumer text,
    p_position text)
RETURNS TABLE (idx integer, verdict text, until_ms bigint)
LANGUAGE plpgsql VOLATILE
SET lock_timeout = '@lock_timeout@'
AS $fn$
#variable_conflict use_column
DECLARE
    v_id integer := p_ns;
    ring record;
    rr record;
    v_now bigint;
    v_owners bigint[];
    v_inserted boolean;
    v_n integer := coalesce(cardinality(p_ids), 0);
    v_lookups boolean;
    v_any_bloom boolean;
    v_any_done boolean := false;
    v_done boolean[];
    v_bloom boolean[];
    v_gens bigint[];
    v_gen bigint;
    v_keys bytea[];
    v_idxs integer[];
    v_kowners bigint[];
    v_found integer[];
    v_by bigint[];
    v_open text;
    v_conflicted integer[];
    v_seen boolean[];
    v_complete integer[] := '{}';
    v_new integer := 0;
    o_idx integer[] := '{}';
    o_verdict text[] := '{}';
    o_until bigint[] := '{}';
    k integer;
BEGIN
    IF v_id IS NULL THEN
        SELECT n.id INTO v_id FROM @schema@.namespaces n WHERE n.name = p_name;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 0, 'unknown'::text, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(@lock_key@, v_id);
    IF current_setting('transaction_isolation') = 'read committed' THEN
        -- A fresh snapshot, taken after the lock: the ring as it is.
        SELECT n.name, n.version, n.open_gen, n.exact_floor, n.oldest_gen, n.capacity,
               n.span_ms, n.opened_at, n.seed,
               (SELECT coalesce(sum(c.n), 0) FROM @schema@.counts c
                 WHERE c.ns = n.id AND c.gen = n.open_gen) AS open_ids
          INTO ring FROM @schema@.namespaces n WHERE n.id = v_id;
    ELSE
        SELECT n.name, n.version, n.open_gen, n.exact_floor, n.oldest_gen, n.capacity,
               n.span_ms, n.opened_at, n.seed,
               (SELECT coalesce(sum(c.n), 0) FROM @schema@.counts c
                 WHERE c.ns = n.id AND c.gen = n.open_gen) AS open_ids
          INTO ring FROM @schema@.namespaces n WHERE n.id = v_id FOR SHARE OF n;
    END IF;
    IF NOT FOUND OR ring.name <> p_name THEN
        RETURN QUERY SELECT 0, CASE WHEN p_ns IS NULL THEN 'unknown' ELSE 'stale' END, NULL::bigint;
        RETURN;
    END IF;
    IF p_ns IS NOT NULL AND ring.version <> p_version THEN
        RETURN QUERY SELECT 0, 'stale'::text, ring.version;
        RETURN;
    END IF;
    v_now := coalesce(p_now, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    IF (p_rotate OR NOT p_check) AND ring.open_ids >= ring.capacity THEN
        RETURN QUERY SELECT 0, 'full'::text, NULL::bigint;
        RETURN;
    END IF;
    IF p_rotate AND v_now - ring.opened_at >= ring.span_ms THEN
        RETURN QUERY SELECT 0, 'due'::text, NULL::bigint;
        RETURN;
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    v_open := 'marks_' || v_id || '_' || ring.open_gen;
    v_lookups := CASE WHEN p_ns IS NULL
                      THEN greatest(ring.exact_floor, ring.oldest_gen) < ring.open_gen
                      ELSE cardinality(p_look_idx) > 0 OR cardinality(p_look_all) > 0 END;
    v_any_bloom := p_ns IS NOT NULL AND cardinality(p_bloom) > 0;

    -- One ID that no sealed generation may hold: its insert decides, and only a
    -- conflict needs the rest.
    IF v_n = 1 AND NOT p_check AND NOT v_lookups AND NOT v_any_bloom THEN
        EXECUTE format('INSERT INTO @schema@.%I (id, owner) VALUES ($1, $2)
                        ON CONFLICT DO NOTHING RETURNING true', v_open)
          INTO v_inserted
          USING p_ids[1], @schema@.owner_fp(ring.seed, coalesce(p_owners[1], p_owner));
        IF v_inserted THEN
            INSERT INTO @schema@.counts AS c (ns, gen, shard, n)
            VALUES (v_id, ring.open_gen, pg_backend_pid() % 64, 1)
            ON CONFLICT (ns, gen, shard) DO UPDATE SET n = c.n + excluded.n;
            IF p_consumer IS NOT NULL THEN
                INSERT INTO @schema@.checkpoints AS c (ns, consumer, position)
                VALUES (v_id, p_consumer, p_position)
                ON CONFLICT (ns, consumer) DO UPDATE SET position = excluded.position;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF p_owners IS NOT NULL THEN
        SELECT array_agg(@schema@.owner_fp(ring.seed, o) ORDER BY k) INTO v_owners
          FROM unnest(p_owners) WITH ORDINALITY u(o, k);
    ELSIF p_owner IS NOT NULL THEN
        v_owners := array_fill(@schema@.owner_fp(ring.seed, p_owner), ARRAY[v_n]);
    END IF;
    v_done := array_fill(false, ARRAY[v_n]);
    v_bloom := array_fill(false, ARRAY[v_n]);
    v_seen := array_fill(false, ARRAY[v_n]);
    IF v_any_bloom THEN
        FOREACH k IN ARRAY p_bloom LOOP
            v_bloom[k] := true;
        END LOOP;
    END IF;

    -- Sealed generations that keep their exact tables, newest first: the first done
    -- mark found is the one that counts.
    IF v_lookups THEN
        IF p_ns IS NULL THEN
            SELECT array_agg(g ORDER BY g DESC) INTO v_gens
              FROM generate_series(greatest(ring.exact_floor, ring.oldest_gen), ring.open_gen - 1) g;
        ELSE
            SELECT array_agg(DISTINCT g ORDER BY g DESC) INTO v_gens
              FROM (SELECT unnest(p_look_gen) UNION SELECT unnest(p_look_all)) s(g)
             WHERE g >= greatest(ring.exact_floor, ring.oldest_gen) AND g < ring.open_gen;
        END IF;
        FOREACH v_gen IN ARRAY coalesce(v_gens, '{}') LOOP
            IF p_ns IS NULL OR v_gen = ANY(p_look_all) THEN
                SELECT array_agg(p_ids[i] ORDER BY i), array_agg(i ORDER BY i) INTO v_keys, v_idxs
                  FROM generate_series(1, v_n) i WHERE NOT v_done[i];
            ELSE
                SELECT array_agg(p_ids[l.i] ORDER BY l.i), array_agg(l.i ORDER BY l.i)
                  INTO v_keys, v_idxs
                  FROM unnest(p_look_idx, p_look_gen) l(i, g)
                 WHERE l.g = v_gen AND NOT v_done[l.i];
            END IF;
            CONTINUE WHEN v_keys IS NULL;
            EXECUTE format(
                'SELECT array_agg(u.i), array_agg(m.owner)
                   FROM unnest($1::bytea[], $2::integer[]) u(x, i)
                   JOIN @schema@.%I m ON m.id = u.x WHERE NOT m.claim',
                'marks_' || v_id || '_' || v_gen)
              INTO v_found, v_by USING v_keys, v_idxs;
            FOR k IN 1 .. coalesce(cardinality(v_found), 0) LOOP
                v_done[v_found[k]] := true;
                v_any_done := true;
                o_idx := o_idx || v_found[k];
                o_verdict := o_verdict || CASE WHEN v_owners[v_found[k]] = v_by[k]
                                               THEN 'replayed' ELSE 'duplicate' END;
                o_until := o_until || NULL::bigint;
            END LOOP;
        END LOOP;
    END IF;

    IF p_check THEN
        -- The open generation decides the rest: a done row, a live claim, or nothing.
        SELECT array_agg(p_ids[i] ORDER BY i), array_agg(i ORDER BY i) INTO v_keys, v_idxs
          FROM generate_series(1, v_n) i WHERE NOT v_done[i];
        IF v_keys IS NOT NULL THEN
            FOR rr IN EXECUTE format(
                'SELECT u.i, m.owner, m.claim, c.until_ms
                   FROM unnest($1::bytea[], $2::integer[]) u(x, i)
                   JOIN @schema@.%I m ON m.id = u.x
                   LEFT JOIN @schema@.claims c ON c.ns = $3 AND c.id = u.x', v_open)
              USING v_keys, v_idxs, v_id LOOP
                v_seen[rr.i] := true;
                IF NOT rr.claim THEN
                    o_idx := o_idx || rr.i; o_verdict := o_verdict || 'duplicate'::text;
                    o_until := o_until || NULL::bigint;
                ELSIF rr.owner IS NOT NULL AND coalesce(rr.until_ms, 0) > v_now THEN
                    o_idx := o_idx || rr.i; o_verdict := o_verdict || 'in_progress'::text;
                    o_until := o_until || rr.until_ms;
                ELSIF v_bloom[rr.i] THEN
                    o_idx := o_idx || rr.i; o_verdict := o_verdict || 'probable_duplicate'::text;
                    o_until := o_until || NULL::bigint;
                END IF;
            END LOOP;
            IF v_any_bloom THEN
                FOREACH k IN ARRAY v_idxs LOOP
                    IF v_bloom[k] AND NOT v_seen[k] THEN
                        o_idx := o_idx || k; o_verdict := o_verdict || 'probable_duplicate'::text;
                        o_until := o_until || NULL::bigint;
                    END IF;
                END LOOP;
            END IF;
        END IF;
        RETURN QUERY SELECT * FROM unnest(o_idx, o_verdict, o_until);
        RETURN;
    END IF;

    -- The open generation decides the rest by its unique key, in key order. IDs a
    -- Bloom-only filter holds are not inserted: only an existing row may speak
    -- for them.
    IF v_any_done OR v_any_bloom THEN
        SELECT array_agg(p_ids[i] ORDER BY i), array_agg(i ORDER BY i), array_agg(v_owners[i] ORDER BY i)
          INTO v_keys, v_idxs, v_kowners
          FROM generate_series(1, v_n) i WHERE NOT v_done[i] AND NOT v_bloom[i];
    ELSE
        v_keys := p_ids;
        v_idxs := NULL;
        v_kowners := v_owners;
    END IF;
    IF v_keys IS NOT NULL AND v_idxs IS NULL THEN
        EXECUTE format(
            'WITH ins AS (
                 INSERT INTO @schema@.%I (id, owner)
                 SELECT x, o FROM unnest($1::bytea[], $2::bigint[]) u(x, o) WHERE x IS NOT NULL
                 ON CONFLICT DO NOTHING RETURNING id)
             SELECT array_agg(u.i) FROM unnest($1::bytea[]) WITH ORDINALITY u(x, i)
              WHERE u.x NOT IN (SELECT ins.id FROM ins)', v_open)
          INTO v_conflicted USING v_keys, v_kowners;
        v_new := cardinality(v_keys) - coalesce(cardinality(v_conflicted), 0);
    ELSIF v_keys IS NOT NULL THEN
        EXECUTE format(
            'WITH ins AS (
                 INSERT INTO @schema@.%I (id, owner)
                 SELECT x, o FROM unnest($1::bytea[], $2::bigint[]) u(x, o) WHERE x IS NOT NULL
                 ON CONFLICT DO NOTHING RETURNING id)
             SELECT array_agg(u.i) FROM unnest($1::bytea[], $3::integer[]) u(x, i)
              WHERE u.x NOT IN (SELECT ins.id FROM ins)', v_open)
          INTO v_conflicted USING v_keys, v_kowners, v_idxs;
        v_new := cardinality(v_keys) - coalesce(cardinality(v_conflicted), 0);
    END IF;

    -- The rest met a row of the open generation (or a Bloom-only filter): what the
    -- row is decides, read locked, in key order.
    IF v_conflicted IS NOT NULL OR v_any_bloom THEN
        SELECT array_agg(p_ids[i] ORDER BY i), array_agg(i ORDER BY i) INTO v_keys, v_idxs
          FROM (SELECT unnest(v_conflicted)
                UNION ALL
                SELECT i FROM generate_series(1, v_n) i WHERE v_bloom[i] AND NOT v_done[i]) s(i);
    ELSE
        v_keys := NULL;
    END IF;
    IF v_keys IS NOT NULL THEN
        FOR rr IN EXECUTE format(
            'SELECT u.i, m.owner, m.claim, c.until_ms
               FROM unnest($1::bytea[], $2::integer[]) u(x, i)
               JOIN @schema@.%I m ON m.id = u.x
               LEFT JOIN @schema@.claims c ON c.ns = $3 AND c.id = u.x
              ORDER BY u.x FOR UPDATE OF m', v_open)
          USING v_keys, v_idxs, v_id LOOP
            v_seen[rr.i] := true;
            IF NOT rr.claim THEN
                -- A done mark.
                o_idx := o_idx || rr.i;
                o_verdict := o_verdict || CASE WHEN v_owners[rr.i] = rr.owner
                                               THEN 'replayed' ELSE 'duplicate' END;
                o_until := o_until || NULL::bigint;
            ELSIF v_owners[rr.i] = rr.owner THEN
                -- The claim's owner marking its ID completes the claim, live or not.
                v_complete := v_complete || rr.i;
            ELSIF rr.owner IS NOT NULL AND coalesce(rr.until_ms, 0) > v_now THEN
                o_idx := o_idx || rr.i; o_verdict := o_verdict || 'in_progress'::text;
                o_until := o_until || rr.until_ms;
            ELSIF v_bloom[rr.i] THEN
                -- Another owner's lease ran out: as good as absent.
                o_idx := o_idx || rr.i; o_verdict := o_verdict || 'probable_duplicate'::text;
                o_until := o_until || NULL::bigint;
            ELSE
                v_complete := v_complete || rr.i;
            END IF;
        END LOOP;
        FOREACH k IN ARRAY v_idxs LOOP
            CONTINUE WHEN v_seen[k];
            IF v_bloom[k] THEN
                o_idx := o_idx || k; o_verdict := o_verdict || 'probable_duplicate'::text;
                o_until := o_until || NULL::bigint;
            ELSE
                -- The row it met is gone (a claim released between the insert and the
                -- read): nothing is decided; the whole call starts over.
                RAISE EXCEPTION 'oncely: ID % changed state while being marked; retry', k
                    USING ERRCODE = '40001';
            END IF;
        END LOOP;
    END IF;
    IF cardinality(v_complete) > 0 THEN
        -- A claim's placeholder turns into the mark, with its marker as owner.
        EXECUTE format(
            'UPDATE @schema@.%I m SET claim = false, owner = u.o
               FROM unnest($1::bytea[], $2::bigint[]) u(x, o) WHERE m.id = u.x', v_open)
          USING (SELECT array_agg(p_ids[i]) FROM unnest(v_complete) i),
                (SELECT array_agg(v_owners[i]) FROM unnest(v_complete) i);
        DELETE FROM @schema@.claims c
         WHERE c.ns = v_id AND c.id = ANY(SELECT p_ids[i] FROM unnest(v_complete) i);
        v_new := v_new + cardinality(v_complete);
    END IF;
    -- Counted last, on the session's shard: the row is held from here until commit
    -- and no other lock is waited for meanwhile, so it is never one link of a
    -- deadlock.
    IF v_new > 0 THEN
        INSERT INTO @schema@.counts AS c (ns, gen, shard, n)
        VALUES (v_id, ring.open_gen, pg_backend_pid() % 64, v_new)
        ON CONFLICT (ns, gen, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    IF p_consumer IS NOT NULL THEN
        INSERT INTO @schema@.checkpoints AS c (ns, consumer, position)
        VALUES (v_id, p_consumer, p_position)
        ON CONFLICT (ns, consumer) DO UPDATE SET position = excluded.position;
    END IF;
    RETURN QUERY SELECT * FROM unnest(o_idx, o_verdict, o_until);
END
$fn$;

-- What the public functions share: validation as the library's, repeats answered
-- after their first occurrence, one row per ID in the order given.
CREATE OR REPLACE FUNCTION @schema@.answer(
    p_namespace text, p_ids bytea[], p_owner text, p_check boolean)
RETURNS TABLE (pos integer, verdict text, replayed boolean, until_ms bigint)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_uniq bytea[];
    v_fpos integer[];
    v_first integer[];
    v_verdict text[];
    v_until bigint[];
    r record;
    k integer;
BEGIN
    IF p_namespace IS NULL THEN
        RAISE EXCEPTION 'oncely: the namespace is NULL' USING ERRCODE = '22004';
    END IF;
    IF p_ids IS NULL THEN
        RAISE EXCEPTION 'oncely: the IDs are NULL' USING ERRCODE = '22004';
    END IF;
    FOR k IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        IF p_ids[k] IS NULL OR octet_length(p_ids[k]) NOT BETWEEN 1 AND 256 THEN
            RAISE EXCEPTION 'oncely: invalid event id at index %: %', k - 1,
                CASE WHEN p_ids[k] IS NULL THEN 'NULL'
                     WHEN octet_length(p_ids[k]) = 0 THEN 'empty'
                     ELSE octet_length(p_ids[k]) || ' bytes, over the limit of 256' END
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF p_owner IS NOT NULL AND octet_length(p_owner) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'oncely: invalid owner: %',
            CASE WHEN p_owner = '' THEN 'empty' ELSE 'longer than 256 bytes' END
            USING ERRCODE = '22023';
    END IF;
    -- Distinct IDs in ascending order, as `mark_ids` takes them (`v_fpos` the
    -- position of each one's first occurrence), and for every position the index of
    -- its ID among them.
    SELECT array_agg(x ORDER BY x), array_agg(f ORDER BY x) INTO v_uniq, v_fpos
      FROM (SELECT x, min(o)::integer AS f FROM unnest(p_ids) WITH ORDINALITY u(x, o) GROUP BY x) s;
    SELECT array_agg(d.k ORDER BY u.o) INTO v_first
      FROM unnest(p_ids) WITH ORDINALITY u(x, o)
      JOIN unnest(v_uniq) WITH ORDINALITY d(x, k) ON d.x = u.x;
    v_verdict := array_fill(NULL::text, ARRAY[coalesce(cardinality(v_uniq), 0)]);
    v_until := array_fill(NULL::bigint, ARRAY[coalesce(cardinality(v_uniq), 0)]);
    FOR r IN SELECT * FROM @schema@.mark_ids(
                 p_namespace, NULL, NULL, coalesce(v_uniq, '{}'), p_owner, NULL,
                 p_check, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL) LOOP
        IF r.idx = 0 THEN
            IF r.verdict = 'unknown' THEN
                RAISE EXCEPTION 'oncely: unknown namespace %', quote_literal(p_namespace)
                    USING ERRCODE = '42704';
            END IF;
            -- full: the open generation must rotate before it takes more IDs, which
            -- a tracker does (its tick, every second in the daemon). Retry shortly.
            RAISE EXCEPTION 'oncely: namespace %''s open generation is full until it rotates; retry shortly',
                quote_literal(p_namespace)
                USING ERRCODE = 'OC001',
                      HINT = 'a running Oncely tracker or daemon rotates it within a second';
        END IF;
        v_verdict[r.idx] := r.verdict;
        v_until[r.idx] := r.until_ms;
    END LOOP;
    -- A repeat answers after its first occurrence: a `new` repeated is the same
    -- owner's replay, or without an owner a duplicate.
    RETURN QUERY
    SELECT u.o::integer,
           CASE WHEN v.first OR p_check OR v.verdict IS NOT NULL
                THEN coalesce(nullif(v.verdict, 'replayed'), 'new')
                WHEN p_owner IS NOT NULL THEN 'new'
                ELSE 'duplicate' END,
           v.verdict IS NOT DISTINCT FROM 'replayed'
               OR (NOT v.first AND NOT p_check AND v.verdict IS NULL AND p_owner IS NOT NULL),
           v.until_ms
      FROM unnest(p_ids) WITH ORDINALITY u(x, o)
      CROSS JOIN LATERAL (
          SELECT v_verdict[v_first[u.o]] AS verdict, v_until[v_first[u.o]] AS until_ms,
                 v_fpos[v_first[u.o]] = u.o AS first
      ) v
     ORDER BY u.o;
END
$fn$;

-- Marks IDs (text, as UTF-8) inside the caller's transaction; one row per ID, in
-- order. `verdict` is new (process it), duplicate (skip it), in_progress (another
-- owner's live claim, until `until_ms`); `replayed` is true for a `new` that the same
-- owner token got before. See README "From other languages" for where it cannot
-- answer as the library does.
CREATE OR REPLACE FUNCTION @schema@.check_and_mark(
    p_namespace text, p_ids text[], p_owner text DEFAULT NULL)
RETURNS TABLE (id text, verdict text, replayed boolean, until_ms bigint)
LANGUAGE sql VOLATILE AS $fn$
    SELECT p_ids[a.pos], a.verdict, a.replayed, a.until_ms
      FROM @schema@.answer(p_namespace,
                           (SELECT array_agg(convert_to(x, 'UTF8') ORDER BY o)
                              FROM unnest(p_ids) WITH ORDINALITY u(x, o)),
                           p_owner, false) a
     ORDER BY a.pos
$fn$;

-- As `check_and_mark`, for IDs as raw bytes (a separate name, not an overload:
-- drivers that send parameters untyped would make an overload ambiguous).
CREATE OR REPLACE FUNCTION @schema@.check_and_mark_bytes(
    p_namespace text, p_ids bytea[], p_owner text DEFAULT NULL)
RETURNS TABLE (id bytea, verdict text, replayed boolean, until_ms bigint)
LANGUAGE sql VOLATILE AS $fn$
    SELECT p_ids[a.pos], a.verdict, a.replayed, a.until_ms
      FROM @schema@.answer(p_namespace, p_ids, p_owner, false) a
     ORDER BY a.pos
$fn$;

-- Answers as `check_and_mark` without marking: `new` means unseen.
CREATE OR REPLACE FUNCTION @schema@.check(p_namespace text, p_ids text[])
RETURNS TABLE (id text, verdict text, until_ms bigint)
LANGUAGE sql VOLATILE AS $fn$
    SELECT p_ids[a.pos], a.verdict, a.until_ms
      FROM @schema@.answer(p_namespace,
                           (SELECT array_agg(convert_to(x, 'UTF8') ORDER BY o)
                              FROM unnest(p_ids) WITH ORDINALITY u(x, o)),
                           NULL, true) a
     ORDER BY a.pos
$fn$;

CREATE OR REPLACE FUNCTION @schema@.check_bytes(p_namespace text, p_ids bytea[])
RETURNS TABLE (id bytea, verdict text, until_ms bigint)
LANGUAGE sql VOLATILE AS $fn$
    SELECT p_ids[a.pos], a.verdict, a.until_ms
      FROM @schema@.answer(p_namespace, p_ids, NULL, true) a
     ORDER BY a.pos
$fn$;

-- The namespace a checkpoint write names, once its consumer and position are
-- validated as the library validates them.
CREATE OR REPLACE FUNCTION @schema@.checkpoint_target(
    p_namespace text, p_consumer text, p_position text)
RETURNS integer LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_id integer;
BEGIN
    IF p_consumer IS NULL OR p_consumer !~ '^[A-Za-z0-9._-]{1,64}$' OR p_consumer IN ('.', '..') THEN
        RAISE EXCEPTION 'oncely: invalid consumer %: 1 to 64 of A-Z, a-z, 0-9, ''.'', ''_'' and ''-'', not "." or ".."',
            quote_nullable(p_consumer) USING ERRCODE = '22023';
    END IF;
    IF p_position IS NULL OR octet_length(p_position) NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'oncely: invalid position: % bytes is outside 1..=1024',
            coalesce(octet_length(p_position), 0) USING ERRCODE = '22023';
    END IF;
    SELECT n.id INTO v_id FROM @schema@.namespaces n WHERE n.name = p_namespace;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'oncely: unknown namespace %', quote_nullable(p_namespace)
            USING ERRCODE = '42704';
    END IF;
    RETURN v_id;
END
$fn$;

-- Stores a consumer's last processed position in a namespace, inside the caller's
-- transaction (with the marks it made).
CREATE OR REPLACE FUNCTION @schema@.set_checkpoint(
    p_namespace text, p_consumer text, p_position text)
RETURNS void LANGUAGE sql VOLATILE AS $fn$
    INSERT INTO @schema@.checkpoints AS c (ns, consumer, position)
    VALUES (@schema@.checkpoint_target(p_namespace, p_consumer, p_position), p_consumer, p_position)
    ON CONFLICT (ns, consumer) DO UPDATE SET position = excluded.position
$fn$;

-- As `set_checkpoint`, only if the stored position is `p_expected` (NULL: only if
-- none is stored yet): the library's `set_checkpoint_if`, so that two instances of
-- a consumer never move its checkpoint over each other. The new position stored
-- already succeeds (a retry whose first attempt landed). Otherwise it raises
-- SQLSTATE OC002, which aborts the caller's transaction, with the stored position
-- in DETAIL as JSON: {"current": "<position>"} or {"current": null}. The row stays
-- locked until the caller's transaction ends.
CREATE OR REPLACE FUNCTION @schema@.set_checkpoint_if(
    p_namespace text, p_consumer text, p_expected text, p_position text)
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_id integer;
    v_stored text;
    v_found boolean;
BEGIN
    v_id := @schema@.checkpoint_target(p_namespace, p_consumer, p_position);
    IF octet_length(p_expected) NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'oncely: invalid expected: % bytes is outside 1..=1024',
            octet_length(p_expected) USING ERRCODE = '22023';
    END IF;
    -- Twice at most: a first round that found no row may lose the insert to
    -- another transaction's; the second finds that row, and locks it.
    FOR round IN 1..2 LOOP
        SELECT c.position INTO v_stored FROM @schema@.checkpoints c
         WHERE c.ns = v_id AND c.consumer = p_consumer FOR UPDATE;
        v_found := FOUND;
        IF v_stored = p_position THEN
            RETURN;
        END IF;
        IF v_stored IS DISTINCT FROM p_expected THEN
            RAISE EXCEPTION 'oncely: the checkpoint of consumer % is %, not % as expected; nothing changed',
                quote_literal(p_consumer),
                coalesce('at ' || quote_literal(v_stored), 'unset'),
                coalesce('at ' || quote_literal(p_expected), 'unset')
                USING ERRCODE = 'OC002',
                      DETAIL = json_build_object('current', v_stored)::text;
        END IF;
        IF v_found THEN
            UPDATE @schema@.checkpoints c SET position = p_position
             WHERE c.ns = v_id AND c.consumer = p_consumer;
            RETURN;
        END IF;
        INSERT INTO @schema@.checkpoints (ns, consumer, position)
        VALUES (v_id, p_consumer, p_position)
        ON CONFLICT (ns, consumer) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'oncely: the checkpoint of consumer % was written and removed meanwhile; retry',
        quote_literal(p_consumer) USING ERRCODE = '40001';
END
$fn$;

-- A consumer's stored position (NULL when none), as the caller's transaction sees it.
CREATE OR REPLACE FUNCTION @schema@.checkpoint(p_namespace text, p_consumer text)
RETURNS text LANGUAGE sql STABLE AS $fn$
    SELECT c.position FROM @schema@.checkpoints c
      JOIN @schema@.namespaces n ON n.id = c.ns
     WHERE n.name = p_namespace AND c.consumer = p_consumer
$fn$;

-- Forgets IDs in a namespace, as the library's `forget` does (`forget.rs`; one
-- rule, `decide.rs`'s): a done mark in an exact table with no live claim beside it
-- is deleted, so that the next caller gets the ID as new; a live claim is left
-- alone; an ID only a Bloom-only generation's filter holds has nothing to delete.
-- Answers one boolean per position of `p_ids`: true where it deleted a mark (a
-- repeat: false). Validation as `answer`'s.
--
-- The locks, in order, as the library's: the namespace's advisory lock, shared (no
-- rotation, no move of the exact floor meanwhile); at REPEATABLE READ and
-- SERIALIZABLE a share lock on the ring row (40001 for a snapshot that predates a
-- change of the ring); the IDs' rows in the open generation, then in each sealed
-- generation that keeps its table, newest first, in ID order; then the rows of the
-- generations it deletes from, newest first. `lock_timeout` bounds every wait.
--
-- Each generation it deletes from counts the forgets (`generations.forgets`) and
-- loses its stored Bloom filter, which may hold the IDs: the exact floor never
-- passes a generation without a filter, and the filter is built again from the
-- table (without the IDs) before the generation turns Bloom-only; a build that
-- read the table before this commits stores nothing, for the count moved.
CREATE OR REPLACE FUNCTION @schema@.forget_ids(p_namespace text, p_ids bytea[])
RETURNS boolean[]
LANGUAGE plpgsql VOLATILE
SET lock_timeout = '@lock_timeout@'
AS $fn$
#variable_conflict use_column
DECLARE
    v_id integer;
    ring record;
    rr record;
    v_now bigint;
    v_uniq bytea[];
    v_live bytea[] := '{}';
    v_at_gen bigint[] := '{}';
    v_at_id bytea[] := '{}';
    v_found bytea[];
    v_gone bytea[];
    v_forgotten bytea[] := '{}';
    v_gen bigint;
    k integer;
BEGIN
    IF p_namespace IS NULL THEN
        RAISE EXCEPTION 'oncely: the namespace is NULL' USING ERRCODE = '22004';
    END IF;
    IF p_ids IS NULL THEN
        RAISE EXCEPTION 'oncely: the IDs are NULL' USING ERRCODE = '22004';
    END IF;
    FOR k IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        IF p_ids[k] IS NULL OR octet_length(p_ids[k]) NOT BETWEEN 1 AND 256 THEN
            RAISE EXCEPTION 'oncely: invalid event id at index %: %', k - 1,
                CASE WHEN p_ids[k] IS NULL THEN 'NULL'
                     WHEN octet_length(p_ids[k]) = 0 THEN 'empty'
                     ELSE octet_length(p_ids[k]) || ' bytes, over the limit of 256' END
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    SELECT n.id INTO v_id FROM @schema@.namespaces n WHERE n.name = p_namespace;
    IF FOUND THEN
        PERFORM pg_advisory_xact_lock_shared(@lock_key@, v_id);
        IF current_setting('transaction_isolation') = 'read committed' THEN
            SELECT n.open_gen, n.exact_floor, n.oldest_gen INTO ring
              FROM @schema@.namespaces n WHERE n.id = v_id AND n.name = p_namespace;
        ELSE
            SELECT n.open_gen, n.exact_floor, n.oldest_gen INTO ring
              FROM @schema@.namespaces n WHERE n.id = v_id AND n.name = p_namespace
               FOR SHARE OF n;
        END IF;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'oncely: unknown namespace %', quote_literal(p_namespace)
            USING ERRCODE = '42704';
    END IF;
    v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    SELECT array_agg(DISTINCT x ORDER BY x) INTO v_uniq FROM unnest(p_ids) u(x);
    IF v_uniq IS NULL THEN
        RETURN '{}'::boolean[];
    END IF;
    -- The open generation: a done mark, or a claim's placeholder (live or not).
    FOR rr IN EXECUTE format(
        'SELECT m.id AS x, m.owner, m.claim, c.until_ms
           FROM @schema@.%I m
           LEFT JOIN @schema@.claims c ON c.ns = $2 AND c.id = m.id
          WHERE m.id = ANY($1)
          ORDER BY m.id FOR UPDATE OF m', 'marks_' || v_id || '_' || ring.open_gen)
      USING v_uniq, v_id LOOP
        IF NOT rr.claim THEN
            v_at_gen := v_at_gen || ring.open_gen;
            v_at_id := v_at_id || rr.x;
        ELSIF rr.owner IS NOT NULL AND coalesce(rr.until_ms, 0) > v_now THEN
            v_live := v_live || rr.x;
        END IF;
    END LOOP;
    -- The sealed generations that keep their tables, newest first.
    FOR v_gen IN SELECT g FROM generate_series(ring.open_gen - 1,
                                               greatest(ring.exact_floor, ring.oldest_gen), -1) g LOOP
        EXECUTE format(
            'SELECT array_agg(s.x ORDER BY s.x)
               FROM (SELECT m.id AS x FROM @schema@.%I m WHERE m.id = ANY($1) AND NOT m.claim
                      ORDER BY m.id FOR UPDATE) s', 'marks_' || v_id || '_' || v_gen)
          INTO v_found USING v_uniq;
        FOR k IN 1 .. coalesce(cardinality(v_found), 0) LOOP
            v_at_gen := v_at_gen || v_gen;
            v_at_id := v_at_id || v_found[k];
        END LOOP;
    END LOOP;
    -- A done mark with no live claim beside it is forgotten, from every exact
    -- table that holds it, newest generation first.
    FOR v_gen IN SELECT DISTINCT a.g FROM unnest(v_at_gen) a(g) ORDER BY a.g DESC LOOP
        SELECT array_agg(a.x ORDER BY a.x) INTO v_gone
          FROM unnest(v_at_gen, v_at_id) a(g, x)
         WHERE a.g = v_gen AND NOT (a.x = ANY(v_live));
        CONTINUE WHEN v_gone IS NULL;
        EXECUTE format('DELETE FROM @schema@.%I m WHERE m.id = ANY($1) AND NOT m.claim',
                       'marks_' || v_id || '_' || v_gen)
          USING v_gone;
        UPDATE @schema@.generations g
           SET forgets = g.forgets + cardinality(v_gone), filter = NULL
         WHERE g.ns = v_id AND g.gen = v_gen;
        v_forgotten := v_forgotten || v_gone;
    END LOOP;
    RETURN ARRAY(
        SELECT u.x = ANY(v_forgotten) AND u.o = min(u.o) OVER (PARTITION BY u.x)
          FROM unnest(p_ids) WITH ORDINALITY u(x, o)
         ORDER BY u.o);
END
$fn$;

-- Forgets IDs (text, as UTF-8) inside the caller's transaction: one row per ID, in
-- order, `forgotten` true where its done mark was deleted (the next caller gets it
-- as new), false where nothing exact remembered it, where a live claim holds it
-- (left alone), and for a repeat. The marks are gone when the transaction commits.
CREATE OR REPLACE FUNCTION @schema@.forget(p_namespace text, p_ids text[])
RETURNS TABLE (id text, forgotten boolean)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_answers boolean[];
BEGIN
    v_answers := @schema@.forget_ids(p_namespace,
        CASE WHEN p_ids IS NOT NULL THEN
            coalesce((SELECT array_agg(convert_to(u.x, 'UTF8') ORDER BY u.o)
                        FROM unnest(p_ids) WITH ORDINALITY u(x, o)), '{}'::bytea[])
        END);
    RETURN QUERY SELECT p_ids[k], v_answers[k]
                   FROM generate_series(1, coalesce(cardinality(p_ids), 0)) k ORDER BY k;
END
$fn$;

-- As `forget`, for IDs as raw bytes.
CREATE OR REPLACE FUNCTION @schema@.forget_bytes(p_namespace text, p_ids bytea[])
RETURNS TABLE (id bytea, forgotten boolean)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_answers boolean[];
BEGIN
    v_answers := @schema@.forget_ids(p_namespace, p_ids);
    RETURN QUERY SELECT p_ids[k], v_answers[k]
                   FROM generate_series(1, coalesce(cardinality(p_ids), 0)) k ORDER BY k;
END
$fn$;
