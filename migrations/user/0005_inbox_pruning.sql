-- The dedup window (participants/kit, `dedup.rs`): inbox records of sagas created before
-- `pruned_before` may have been pruned. One row at most, written by the pruner under an exclusive
-- advisory lock before it deletes; every command batch reads it under the shared lock, and a
-- command of a saga created before it is dead-lettered instead of applied, because its earlier
-- outcome may be gone. `reach_ms` is the orchestrator's reach for this participant when the
-- pruner last checked it (the audit's unclaimed-effects check starts past pruned_before + reach).
CREATE TABLE inbox_pruning (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_before timestamptz NOT NULL,
    reach_ms      bigint      NOT NULL CHECK (reach_ms >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
