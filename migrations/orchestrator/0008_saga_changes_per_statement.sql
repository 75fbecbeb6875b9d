-- Live updates, announced once per statement instead of once per row: the same summary per
-- changed saga on `saga_changes`, sent by a statement-level trigger that reads the statement's
-- changed rows from its transition table. The row trigger of 0003 ran its `pg_notify` statement
-- through PL/pgSQL once per row, and with `plan_cache_mode = force_custom_plan` (every service
-- connection, runtime/src/db.rs) planned it anew each time: ≈ 30 µs per row written, against
-- ≈ 6 µs now (143-row batch updates, EXPLAIN ANALYZE; docs/PERFORMANCE.md). Receivers see the
-- same notifications as before, in the order the rows were written.

DROP TRIGGER saga_changed ON sagas;
DROP FUNCTION saga_changed();

CREATE FUNCTION sagas_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('saga_changes', json_build_object(
        'id', id,
        'saga_type', saga_type,
        'state', state,
        'current_step', current_step,
        'failure_reason', left(failure_reason, 500),
        'idempotency_key', idempotency_key,
        'version', version,
        'created_at', created_at,
        'updated_at', updated_at
    )::text)
    FROM changed;
    RETURN NULL;
END
$$;

-- A trigger with a transition table takes one event.
CREATE TRIGGER sagas_inserted AFTER INSERT ON sagas REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION sagas_changed();
CREATE TRIGGER sagas_updated AFTER UPDATE ON sagas REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION sagas_changed();
