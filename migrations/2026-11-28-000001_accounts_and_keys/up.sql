-- Accounts: merchants own API keys; admins decide quota requests.
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('merchant', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Server-side sessions; the cookie carries a random token, only its hash is stored.
CREATE TABLE sessions (
    token_hash  BYTEA PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- API keys: the secret is never stored, only its SHA-256 and a visible prefix.
CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    owner_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix        TEXT NOT NULL,
    secret_hash   BYTEA NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_owner_id_idx ON api_keys (owner_id, created_at);

-- ApiKeyQuota: per-key limits.
CREATE TABLE api_key_quotas (
    api_key_id         UUID PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    requests_per_hour  BIGINT NOT NULL DEFAULT 1000 CHECK (requests_per_hour > 0),
    requests_per_day   BIGINT NOT NULL DEFAULT 10000 CHECK (requests_per_day > 0),
    burst_per_second   INTEGER CHECK (burst_per_second IS NULL OR burst_per_second > 0),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
