ALTER TABLE outbound_emails DROP COLUMN list_unsubscribe;
DROP INDEX users_email_token;
ALTER TABLE users DROP COLUMN email_token;
ALTER TABLE users DROP COLUMN monthly_summary_since;
ALTER TABLE users DROP COLUMN monthly_summary;
