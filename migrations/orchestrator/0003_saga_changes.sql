-- Live updates: every insert or update of a saga is announced on the `saga_changes` channel with
-- its summary, so watchers (WatchSaga/WatchSagas, the dashboard) on any replica see every change
-- without polling.

CREATE FUNCTION saga_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('saga_changes', json_build_object(
        'id', NEW.id,
        'saga_type', NEW.saga_type,
        'state', NEW.state,
        'current_step', NEW.current_step,
        'failure_reason', left(NEW.failure_reason, 500),
        'idempotency_key', NEW.idempotency_key,
        'version', NEW.version,
        'created_at', NEW.created_at,
        'updated_at', NEW.updated_at
    )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER saga_changed AFTER INSERT OR UPDATE ON sagas
    FOR EACH ROW EXECUTE FUNCTION saga_changed();

-- Operators select parked sagas by the step they stopped at.
CREATE INDEX sagas_step_id ON sagas (current_step, id DESC);
