-- Owners can stop the monthly usage summary: in the app, or with the link every summary carries
-- (also as its List-Unsubscribe header, RFC 2369 and RFC 8058 one-click).
ALTER TABLE users ADD COLUMN monthly_summary boolean NOT NULL DEFAULT true;
-- The secret of that link: random, so that it works without signing in and cannot be guessed.
ALTER TABLE users ADD COLUMN email_token uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX users_email_token ON users (email_token);
-- The link a message's List-Unsubscribe header names, for the messages that have one.
ALTER TABLE outbound_emails ADD COLUMN list_unsubscribe text;
