DROP INDEX api_keys_previous_secret_hash;
ALTER TABLE api_keys
    DROP CONSTRAINT api_keys_previous_secret_whole,
    DROP COLUMN previous_last_used_at,
    DROP COLUMN previous_expires_at,
    DROP COLUMN previous_secret_hash,
    DROP COLUMN previous_prefix,
    DROP COLUMN rolled_at;
