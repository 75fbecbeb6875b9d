-- Indexes the dashboard's overview reads with index-only scans (measured by bench/dashboard_bench).

-- Counts by type and state, and lists filtered by type (and state): one index instead of the
-- (saga_type, id) one.
DROP INDEX sagas_type_id;
CREATE INDEX sagas_type_state_id ON sagas (saga_type, state, id DESC);

-- Sagas started per minute. created_at never changes, so this index costs only at insert.
CREATE INDEX sagas_created_at ON sagas (created_at);

-- Sagas finished per minute: a finished saga is never updated again, so its updated_at is its
-- finish time. Only terminal rows are in this index.
CREATE INDEX sagas_finished ON sagas (updated_at, state) WHERE state IN ('completed', 'compensated', 'failed');
