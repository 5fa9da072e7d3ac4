-- Without the column the admins' mail page would show them: their text goes first.
UPDATE outbound_emails SET text_body = 'A password reset link, erased.', html_body = '<p>A password reset link, erased.</p>'
    WHERE confidential;
ALTER TABLE outbound_emails DROP COLUMN confidential;
DROP TABLE password_resets;
