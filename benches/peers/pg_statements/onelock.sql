-- `one.sql` made right by a key-share lock on the ring row (a rotation's update is
-- then re-checked against the row's newest version). No count.
\set id random(1, 1000000000000)
WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(1, 1)), r AS (SELECT 1 FROM ns, l WHERE id = 1 AND version = 7 FOR KEY SHARE OF ns), i AS (INSERT INTO marks_1_1 (id, owner) SELECT int8send(:id), 5 FROM r ON CONFLICT DO NOTHING RETURNING 1) SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM i);
