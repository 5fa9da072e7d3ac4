-- Which quota alerts email a key's owner (in-app notifications always appear).
ALTER TABLE api_keys
    ADD COLUMN alert_email_thresholds SMALLINT[] NOT NULL DEFAULT '{50,80,100}'
    CHECK (alert_email_thresholds <@ '{50,80,100}'::SMALLINT[]);

-- One row per alert that fired: its primary key is what makes an alert happen exactly once per
-- key, window, period and threshold, whichever instance saw the crossing and however often.
CREATE TABLE quota_alerts (
    api_key_id    UUID NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    quota_window  TEXT NOT NULL CHECK (quota_window IN ('hour', 'day')),
    period_start  TIMESTAMPTZ NOT NULL,
    threshold     SMALLINT NOT NULL CHECK (threshold IN (50, 80, 100)),
    quota_limit   BIGINT NOT NULL,
    crossed_at    TIMESTAMPTZ NOT NULL,
    emailed       BOOLEAN NOT NULL,
    PRIMARY KEY (api_key_id, quota_window, period_start, threshold)
);

-- Files attached to outgoing email (the monthly summary's CSV).
CREATE TABLE outbound_email_attachments (
    id            BIGSERIAL PRIMARY KEY,
    email_id      BIGINT NOT NULL REFERENCES outbound_emails (id) ON DELETE CASCADE,
    filename      TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    content       BYTEA NOT NULL
);
CREATE INDEX outbound_email_attachments_email_idx ON outbound_email_attachments (email_id);

-- The monthly summary sent to each key owner: the primary key makes it once per owner and month,
-- even when several instances run the job at the same moment.
CREATE TABLE monthly_reports (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    month       DATE NOT NULL CHECK (extract(day FROM month) = 1),
    email_id    BIGINT REFERENCES outbound_emails (id) ON DELETE SET NULL,
    sends       INTEGER NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, month)
);
