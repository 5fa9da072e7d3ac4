-- An operator can disable an account (`keymeter user disable`): it cannot sign in and its
-- sessions end; NULL is an account in use.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
