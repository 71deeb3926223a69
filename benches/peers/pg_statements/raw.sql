-- The engine's own limit: a bare single-row insert into a plain keyed table.
\set id random(1, 1000000000000)
INSERT INTO plain VALUES (int8send(:id)) ON CONFLICT DO NOTHING;
