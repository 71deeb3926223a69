-- A single ID's mark as `mark_ids` makes it, in PL/pgSQL: shared lock, ring read with
-- the count's sum, the insert as a dynamic EXECUTE (the table is the generation's), the
-- count's upsert. One statement, autocommit.
\set id random(1, 1000000000000)
SELECT f(1, 7, int8send(:id));
