ALTER TABLE outbound_emails DROP COLUMN bulk;
