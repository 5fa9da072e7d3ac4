-- A new password (or a disabled account) forgets the account's browsers for the sign-in
-- throttle, but they stay seen: the owner's own phone signing in again is not announced as a
-- new browser. NULL: known.
ALTER TABLE known_devices ADD COLUMN forgotten_at timestamptz;
