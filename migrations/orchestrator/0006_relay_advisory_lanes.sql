-- The relay now owns lanes through session-level advisory locks (pg_try_advisory_lock) on a
-- connection of its own instead of row locks on this table (see runtime/src/outbox.rs).
DROP TABLE outbox_lanes;
