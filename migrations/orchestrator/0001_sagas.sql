-- Saga instances, their history, and the idempotency of StartSaga.

CREATE TABLE sagas (
    id                 uuid        PRIMARY KEY,          -- UUIDv7: sorts by creation time
    saga_type          text        NOT NULL,
    definition_version integer     NOT NULL,
    state              text        NOT NULL
        CHECK (state IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
    -- Optimistic concurrency: every update says which version it read.
    version            bigint      NOT NULL,
    idempotency_key    text,
    -- sha256 of (saga type, canonical payload): tells "same request again" from "key reused".
    request_hash       bytea,
    context            jsonb       NOT NULL,
    steps              jsonb       NOT NULL,             -- engine StepRecords, one per step
    current_step       text,                             -- step name, for filters and lists
    failure_reason     text,
    -- When the engine must look at this saga again (a deadline or a retry); NULL if never.
    wake_at            timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

CREATE UNIQUE INDEX sagas_idempotency_key ON sagas (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX sagas_wake_at ON sagas (wake_at) WHERE wake_at IS NOT NULL;
-- Lists page newest first by id (UUIDv7 ids sort by creation time); the primary key serves the
-- unfiltered list, these serve the common filters.
CREATE INDEX sagas_state_id ON sagas (state, id DESC);
CREATE INDEX sagas_type_id ON sagas (saga_type, id DESC);

-- Append-only history: the dashboard timeline and the audit of every operator action.
CREATE TABLE saga_events (
    id      bigserial   PRIMARY KEY,
    saga_id uuid        NOT NULL REFERENCES sagas (id),
    at      timestamptz NOT NULL,
    kind    text        NOT NULL,
    actor   text        NOT NULL,
    data    jsonb       NOT NULL
);

CREATE INDEX saga_events_saga ON saga_events (saga_id, id);
