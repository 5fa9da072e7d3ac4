ALTER TABLE outbound_emails DROP COLUMN claim_token, DROP COLUMN message_key;
