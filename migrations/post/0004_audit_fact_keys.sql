-- The audit reads fact sets in pages ordered by the key as text in byte order (the kit's
-- `facts_page`): without this index every page sorts the whole table, so auditing N authors in
-- pages of L costs N/L full sorts. IF NOT EXISTS: the Spring Boot post service's Flyway baselines a
-- database the Rust post service created at version 3 and applies this file again.
CREATE INDEX IF NOT EXISTS authors_id_text ON authors ((id::text) COLLATE "C");
