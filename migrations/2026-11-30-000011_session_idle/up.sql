-- When a session was last used (to the nearest few minutes): one left unused for longer than
-- the idle limit ends, whatever its expiry, so a browser left signed in somewhere is not a way
-- in for the rest of the week.
ALTER TABLE sessions ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
