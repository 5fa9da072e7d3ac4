DROP INDEX outbound_emails_due_idx;
CREATE INDEX outbound_emails_due_idx ON outbound_emails (next_attempt_at) WHERE sent_at IS NULL;
ALTER TABLE outbound_emails DROP COLUMN failed_at, DROP COLUMN retry_until;
