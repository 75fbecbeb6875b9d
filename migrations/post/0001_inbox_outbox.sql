-- The participant protocol's tables (see participants/kit): the idempotent inbox and the outbox.

-- One row per business idempotency key: a repeated command is answered from here.
CREATE TABLE inbox (
    saga_id      uuid        NOT NULL,
    step_index   integer     NOT NULL,
    phase        text        NOT NULL CHECK (phase IN ('action', 'compensation')),
    command_type text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('success', 'business_failure')),
    reason       text,
    reply        jsonb,
    message_id   text        NOT NULL,           -- the command message that was applied
    duplicates   integer     NOT NULL DEFAULT 0, -- redeliveries answered from this row
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step_index, phase)
);

CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    lane       smallint    NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX outbox_lane_id ON outbox (lane, id);

CREATE TABLE outbox_lanes (lane smallint PRIMARY KEY);
INSERT INTO outbox_lanes SELECT generate_series(0, 15);

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
