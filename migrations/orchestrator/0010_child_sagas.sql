-- Child sagas. A child records its parent (saga and step). What one saga owes another — a child
-- to start, a child to compensate, a parent to tell that its child ended — is a row of
-- saga_inputs, written in the transaction of the decision that caused it and applied by the timer
-- loop in the transaction that deletes it: nothing is lost, nothing applied twice.
ALTER TABLE sagas ADD COLUMN parent_id uuid, ADD COLUMN parent_step int4;
CREATE INDEX sagas_parent ON sagas (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE saga_inputs (
    id         bigserial   PRIMARY KEY,
    -- The saga the input is for; for 'start_child', the id the child will have.
    saga_id    uuid        NOT NULL,
    -- 'start_child' (body: parent, step, saga_type, input) or 'input' (body: an engine input).
    kind       text        NOT NULL,
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL
);
