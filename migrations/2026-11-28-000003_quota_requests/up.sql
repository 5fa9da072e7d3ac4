-- A merchant's request for higher limits on one key; an admin approves or denies it.
CREATE TABLE quota_requests (
    id                  BIGSERIAL PRIMARY KEY,
    api_key_id          UUID NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    requested_by        BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    current_per_hour    BIGINT NOT NULL,
    current_per_day     BIGINT NOT NULL,
    requested_per_hour  BIGINT NOT NULL CHECK (requested_per_hour > 0),
    requested_per_day   BIGINT NOT NULL CHECK (requested_per_day > 0),
    reason              TEXT NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'approved', 'denied', 'cancelled')),
    approved_per_hour   BIGINT,
    approved_per_day    BIGINT,
    decided_by          BIGINT REFERENCES users (id) ON DELETE SET NULL,
    decided_at          TIMESTAMPTZ,
    decision_note       TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One open request per key at a time.
CREATE UNIQUE INDEX quota_requests_one_pending_per_key ON quota_requests (api_key_id) WHERE status = 'pending';
CREATE INDEX quota_requests_status_idx ON quota_requests (status, created_at);

-- The audit trail of every quota change: who, which key, from what to what, when and why.
CREATE TABLE quota_changes (
    id                BIGSERIAL PRIMARY KEY,
    api_key_id        UUID NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    changed_by        BIGINT REFERENCES users (id) ON DELETE SET NULL,
    source            TEXT NOT NULL CHECK (source IN ('request', 'admin', 'operator')),
    quota_request_id  BIGINT REFERENCES quota_requests (id) ON DELETE SET NULL,
    old_per_hour      BIGINT NOT NULL,
    old_per_day       BIGINT NOT NULL,
    old_burst         INTEGER,
    new_per_hour      BIGINT NOT NULL,
    new_per_day       BIGINT NOT NULL,
    new_burst         INTEGER,
    reason            TEXT NOT NULL,
    changed_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quota_changes_key_idx ON quota_changes (api_key_id, changed_at);

-- In-app notifications (the bell). `dedupe_key` makes a notification happen at most once.
CREATE TABLE notifications (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    link        TEXT,
    dedupe_key  TEXT UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    read_at     TIMESTAMPTZ
);
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at DESC);

-- Outgoing email, written in the same transaction as what it reports; a sender delivers it
-- and retries with backoff, so nothing is dropped silently.
CREATE TABLE outbound_emails (
    id               BIGSERIAL PRIMARY KEY,
    to_address       TEXT NOT NULL,
    subject          TEXT NOT NULL,
    text_body        TEXT NOT NULL,
    html_body        TEXT NOT NULL,
    dedupe_key       TEXT UNIQUE,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    sent_at          TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbound_emails_due_idx ON outbound_emails (next_attempt_at) WHERE sent_at IS NULL;
