-- `pipecount.sql` with the capacity check (the sum of the count's shards).
\set id random(1, 1000000000000)
\startpipeline
BEGIN;
SELECT pg_advisory_xact_lock_shared(1, 1);
WITH r AS (SELECT 1 FROM ns n WHERE id = 1 AND version = 7 AND (SELECT coalesce(sum(c.n),0) FROM counts c WHERE c.ns=1 AND c.gen=n.open_gen) < n.capacity), i AS (INSERT INTO marks_1_1 (id, owner) SELECT int8send(:id), 5 FROM r ON CONFLICT DO NOTHING RETURNING 1), c AS (INSERT INTO counts AS c SELECT 1, 1, pg_backend_pid() % 64, 1 FROM i ON CONFLICT (ns, gen, shard) DO UPDATE SET n = c.n + excluded.n) SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM i);
END;
\endpipeline
