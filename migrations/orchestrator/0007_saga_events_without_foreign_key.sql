-- History rows are written only by the store, in the same transaction as the saga row they
-- belong to, and saga rows are never deleted: the foreign key checked what cannot happen, at the
-- price of one lookup (and row lock) in `sagas` for every history row — six per two-step saga,
-- a tenth of PostgreSQL's work under load (scripts/bench.sh, see docs/PERFORMANCE.md).
ALTER TABLE saga_events DROP CONSTRAINT saga_events_saga_id_fkey;
