-- A replica of the shapes Oncely's schema gives a single ID's mark (a ring row, the
-- count's shards, one generation's table), for pgbench: see run.sh.
CREATE TABLE ns (id int PRIMARY KEY, name text, version bigint, open_gen bigint, capacity bigint, seed bigint);
INSERT INTO ns VALUES (1, 'bench', 7, 1, 1000000000, 42);
CREATE TABLE counts (ns int, gen bigint, shard int, n bigint, PRIMARY KEY (ns, gen, shard));
CREATE TABLE marks_1_1 (id bytea PRIMARY KEY, owner bigint, claim boolean NOT NULL DEFAULT false);
CREATE TABLE plain (id bytea PRIMARY KEY);
CREATE FUNCTION f(p_ns int, p_version bigint, p_id bytea) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ring record; v boolean;
BEGIN
  PERFORM pg_advisory_xact_lock_shared(1, p_ns);
  SELECT n.version, n.open_gen, n.capacity, (SELECT coalesce(sum(c.n),0) FROM counts c WHERE c.ns=n.id AND c.gen=n.open_gen) AS open_ids
    INTO ring FROM ns n WHERE n.id = p_ns;
  IF ring.version <> p_version OR ring.open_ids >= ring.capacity THEN RETURN NULL; END IF;
  EXECUTE format('INSERT INTO %I (id, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true', 'marks_' || p_ns || '_' || ring.open_gen) INTO v USING p_id, 5::bigint;
  IF v THEN
    INSERT INTO counts AS c VALUES (p_ns, ring.open_gen, pg_backend_pid() % 64, 1) ON CONFLICT (ns, gen, shard) DO UPDATE SET n = c.n + excluded.n;
  END IF;
  RETURN v;
END $$;
