-- The peers' post service database: the project's `authors` table and its index
-- (migrations/post/0002_posts.sql).
CREATE TABLE authors (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Pen names are unique: the business rule that refuses every 10th saga at its second step.
CREATE UNIQUE INDEX authors_name ON authors (lower(name));
