-- The post service's own data: a replica of users as authors, and their posts.

CREATE TABLE authors (
    id         uuid        PRIMARY KEY,          -- the user's id in the user service
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Pen names are unique in the post service (a business rule the user service does not have).
CREATE UNIQUE INDEX authors_name ON authors (lower(name));

CREATE TABLE posts (
    id         uuid        PRIMARY KEY,
    author_id  uuid        NOT NULL REFERENCES authors (id) ON DELETE CASCADE,
    title      text        NOT NULL,
    body       text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX posts_author ON posts (author_id);
