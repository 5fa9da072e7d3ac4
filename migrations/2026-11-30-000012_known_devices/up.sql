-- Browsers that signed in to an account: a sign-in from one of them is counted apart from the
-- address's other attempts, so strangers' failed guesses cannot lock the owner out of their
-- own account. The browser holds a random token (cookie km_device); only its SHA-256 is here.
CREATE TABLE known_devices (
    token_hash bytea NOT NULL,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    last_sign_in_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_hash, user_id)
);
CREATE INDEX known_devices_user ON known_devices (user_id, last_sign_in_at);
