-- The W3C trace context of the request that started each saga: timers and operator actions continue
-- the saga's trace from it, so one saga is one trace.
ALTER TABLE sagas ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}';
