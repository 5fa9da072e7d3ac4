-- A message is given up when the mail server refuses it for good (a permanent 5xx reply), or
-- when it has kept failing for a while (`retry_until`, set at its first failure). Given-up
-- messages stay for the admins' mail page, where one can be sent again.
ALTER TABLE outbound_emails
    ADD COLUMN failed_at TIMESTAMPTZ,
    ADD COLUMN retry_until TIMESTAMPTZ;
DROP INDEX outbound_emails_due_idx;
CREATE INDEX outbound_emails_due_idx ON outbound_emails (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;
