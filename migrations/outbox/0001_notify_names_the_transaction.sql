-- The outbox notification names the transaction that committed (runtime/src/outbox/handoff.rs):
-- a relay publishes the rows its own process handed over once their commit is announced, and
-- reads the table at the first notification it has no rows for. Notifications of different
-- transactions arrive in the order they committed, which keeps a saga's messages in order.
-- Relays of earlier releases ignore the payload.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', pg_current_xact_id()::text);
    RETURN NULL;
END
$$;
