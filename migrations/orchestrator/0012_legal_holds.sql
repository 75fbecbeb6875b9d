-- Legal hold: a held saga is never removed by retention, whatever its age. One row per held
-- saga, with who placed the hold and why; placing and releasing are also recorded in the saga's
-- history (`saga_events`, kinds `hold_placed` and `hold_released`), so the record of a released
-- hold stays.
CREATE TABLE saga_holds (
    saga_id   uuid        PRIMARY KEY,
    operator  text        NOT NULL,
    reason    text        NOT NULL,
    placed_at timestamptz NOT NULL
);
