-- BEGIN; the shared lock; the ring's version checked and the insert (a statement
-- prepared for the generation's table); COMMIT: four statements sent in one pipeline
-- (one round trip). The lock comes first so that the insert's snapshot, taken after
-- it, sees every rotation committed before. No count.
\set id random(1, 1000000000000)
\startpipeline
BEGIN;
SELECT pg_advisory_xact_lock_shared(1, 1);
WITH r AS (SELECT 1 FROM ns WHERE id = 1 AND version = 7), i AS (INSERT INTO marks_1_1 (id, owner) SELECT int8send(:id), 5 FROM r ON CONFLICT DO NOTHING RETURNING 1) SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM i);
END;
\endpipeline
