-- Rolling a key replaces its secret and keeps everything else (id, quota, usage, alerts). The
-- replaced secret may keep working for a while, so integrations can switch over: its hash and
-- visible prefix stay until the next roll, with when it stops (or stopped) working and when a
-- call last came with it (to the minute; NULL: not since the roll).
ALTER TABLE api_keys
    ADD COLUMN rolled_at              timestamptz,
    ADD COLUMN previous_prefix        text,
    ADD COLUMN previous_secret_hash   bytea,
    ADD COLUMN previous_expires_at    timestamptz,
    ADD COLUMN previous_last_used_at  timestamptz,
    ADD CONSTRAINT api_keys_previous_secret_whole CHECK (
        (previous_secret_hash IS NULL) = (previous_prefix IS NULL)
        AND (previous_secret_hash IS NULL) = (previous_expires_at IS NULL)
        AND (previous_secret_hash IS NULL) = (rolled_at IS NULL)
        AND (previous_last_used_at IS NULL OR previous_secret_hash IS NOT NULL)
    );
-- A presented secret is looked up as a key's current or previous one.
CREATE UNIQUE INDEX api_keys_previous_secret_hash ON api_keys (previous_secret_hash)
    WHERE previous_secret_hash IS NOT NULL;
