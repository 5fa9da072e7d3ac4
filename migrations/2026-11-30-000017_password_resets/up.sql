-- Links that let someone who forgot their password choose a new one, mailed to the account's
-- address. Only each token's SHA-256 is kept. A link works once (used_at), until expires_at;
-- using one, or a new password, voids the account's others.
CREATE TABLE password_resets (
    token_hash bytea PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
-- Counting an address's recent links (at most a few an hour) and voiding them.
CREATE INDEX password_resets_user ON password_resets (user_id, created_at);

-- A message whose text is a credential (a reset link): the admins' mail page does not show it.
ALTER TABLE outbound_emails ADD COLUMN confidential boolean NOT NULL DEFAULT false;
