-- The user service's own data.

CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    email          text        NOT NULL,
    name           text        NOT NULL,
    post_count     integer     NOT NULL DEFAULT 0 CHECK (post_count >= 0),
    post_quota     integer     NOT NULL CHECK (post_quota >= 0),
    -- Slots held by publish_post sagas between ReservePostQuota and ConfirmPost/ReleasePostQuota.
    reserved_posts integer     NOT NULL DEFAULT 0 CHECK (reserved_posts >= 0),
    status         text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (post_count + reserved_posts <= post_quota)
);

CREATE UNIQUE INDEX users_email ON users (lower(email));

-- One reservation per publish_post saga.
CREATE TABLE post_reservations (
    saga_id    uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id    uuid        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('reserved', 'confirmed')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX post_reservations_user ON post_reservations (user_id);
