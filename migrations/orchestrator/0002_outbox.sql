-- Transactional outbox (same shape in every service's database; see runtime/src/outbox.rs).

CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    lane       smallint    NOT NULL,                 -- hash(key) % 16: one saga, one lane
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX outbox_lane_id ON outbox (lane, id);

-- A relay batch locks the lanes it publishes (FOR UPDATE SKIP LOCKED), so two relays never
-- publish one lane at once.
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
