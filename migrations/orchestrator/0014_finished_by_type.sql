-- The overview counts finished sagas over its last hour by type from the same index-only scan that
-- draws its per-minute chart, instead of counting the whole table (measured at 10 million sagas:
-- a full count took p50 1.6 s, p99 33 s). The saga type joins the index of finished sagas for that.
DROP INDEX sagas_finished;
CREATE INDEX sagas_finished ON sagas (updated_at, state, saga_type)
    WHERE state IN ('completed', 'compensated', 'failed');
