-- What the account page's list of sessions calls each one ("Firefox on Linux"), made from the
-- User-Agent at sign-in; the User-Agent itself is not kept. '' for sessions made before.
ALTER TABLE sessions ADD COLUMN browser text NOT NULL DEFAULT '';
