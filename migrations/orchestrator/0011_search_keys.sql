-- Search by business key. A definition's `search_keys` name context fields (an e-mail, a user id,
-- an order id); their values are written here in the transaction that writes the saga — the
-- input's when it starts, a step's outputs when its reply arrives — so a saga is findable by
-- them the moment it exists. Rows are only ever added while a saga lives, and removed with it
-- (retention).
CREATE TABLE saga_keys (
    saga_id uuid NOT NULL,
    name    text NOT NULL,
    -- "C" collation: byte order, so `value LIKE 'prefix%'` is an index range scan.
    value   text COLLATE "C" NOT NULL,
    PRIMARY KEY (saga_id, name, value)
);

-- Lookups by value (any key, or one named key; exact or prefix), index-only.
CREATE INDEX saga_keys_value ON saga_keys (value, name, saga_id);
