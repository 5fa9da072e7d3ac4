ALTER TABLE outbound_emails DROP COLUMN confidential;
DROP TABLE password_resets;
