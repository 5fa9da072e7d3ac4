-- A sender claims one message at a time: the token says whose claim it is, so a sender whose
-- claim ran out (and was taken over) cannot mark the message. The message key gives each
-- message one Message-ID for all its attempts, so mail clients can tell a resent copy.
ALTER TABLE outbound_emails
    ADD COLUMN claim_token UUID,
    ADD COLUMN message_key UUID NOT NULL DEFAULT gen_random_uuid();
