-- Operator bulk work as durable jobs (a bulk compensation replay today). A job is a row: what to
-- do (kind, params), who asked and why, how far it got (cursor, processed, counts), and which
-- replica works it now (owner, under a lease it renews). Any replica claims a running job whose
-- lease is free or lapsed; each item's effect, its result row and the job's progress commit in
-- one transaction, fenced by the job row (owned by the worker, still running), so a job resumed
-- on another replica neither repeats nor skips an item.

CREATE TABLE operator_jobs (
    id           uuid        PRIMARY KEY,                 -- UUIDv7: sorts by creation time
    kind         text        NOT NULL CHECK (kind IN ('replay_compensations')),
    state        text        NOT NULL CHECK (state IN ('running', 'completed', 'cancelled')),
    operator     text        NOT NULL,                    -- who started it (the actor of its actions)
    reason       text        NOT NULL,
    params       jsonb       NOT NULL,                    -- the kind's parameters (filter, rate, limit)
    cursor       uuid,                                    -- the last saga handled (ids walked in order)
    processed    integer     NOT NULL DEFAULT 0,
    counts       jsonb       NOT NULL DEFAULT '{}',       -- outcome -> items
    owner        text,                                    -- the replica working it, while leased
    lease_until  timestamptz,
    last_error   text,                                    -- the last error that held it up (retried)
    cancelled_by text,
    cancel_reason text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    finished_at  timestamptz
);

CREATE INDEX operator_jobs_running ON operator_jobs (created_at) WHERE state = 'running';

-- One row per item a job handled, written with the item's effect: its outcome for the operator,
-- and the guarantee that no item is handled twice by one job.
CREATE TABLE operator_job_items (
    job_id   uuid        NOT NULL REFERENCES operator_jobs (id),
    seq      integer     NOT NULL,                        -- 1, 2, … in the order handled
    saga_id  uuid        NOT NULL,
    outcome  text        NOT NULL,
    detail   text        NOT NULL DEFAULT '',
    commands jsonb       NOT NULL DEFAULT '[]',
    at       timestamptz NOT NULL,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, saga_id)
);
