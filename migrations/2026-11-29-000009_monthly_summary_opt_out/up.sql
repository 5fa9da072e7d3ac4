-- Owners can stop the monthly usage summary: in the app, or with the link every summary carries
-- (also as its List-Unsubscribe header, RFC 2369 and RFC 8058 one-click).
ALTER TABLE users ADD COLUMN monthly_summary boolean NOT NULL DEFAULT true;
-- When it was last turned on (NULL: never off): months that ended before then are not sent, or
-- turning it on again would bring every month missed meanwhile at once.
ALTER TABLE users ADD COLUMN monthly_summary_since timestamptz;
-- The secret of that link: random, so that it works without signing in and cannot be guessed.
ALTER TABLE users ADD COLUMN email_token uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX users_email_token ON users (email_token);
-- The link a message's List-Unsubscribe header names, for the messages that have one.
ALTER TABLE outbound_emails ADD COLUMN list_unsubscribe text;
