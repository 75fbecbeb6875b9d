-- The audit reads fact sets in pages ordered by the key as text in byte order (the kit's
-- `facts_page`): without this index every page sorts the whole table, so auditing N users in pages
-- of L costs N/L full sorts. IF NOT EXISTS: harmless where it already exists.
CREATE INDEX IF NOT EXISTS users_id_text ON users ((id::text) COLLATE "C");
