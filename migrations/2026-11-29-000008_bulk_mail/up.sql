-- Bulk mail (the monthly summaries) goes after everything else that is due: a quota alert must
-- not wait behind thousands of summaries queued at the start of a month.
ALTER TABLE outbound_emails ADD COLUMN bulk BOOLEAN NOT NULL DEFAULT false;
