-- The peers' user service database: the project's `users` table and its index
-- (migrations/user/0002_users.sql), less what register_user does not touch.
CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    email          text        NOT NULL,
    name           text        NOT NULL,
    post_count     integer     NOT NULL DEFAULT 0 CHECK (post_count >= 0),
    post_quota     integer     NOT NULL CHECK (post_quota >= 0),
    reserved_posts integer     NOT NULL DEFAULT 0 CHECK (reserved_posts >= 0),
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (post_count + reserved_posts <= post_quota)
);
CREATE UNIQUE INDEX users_email ON users (lower(email));
