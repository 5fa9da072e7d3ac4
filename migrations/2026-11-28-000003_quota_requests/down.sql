DROP TABLE outbound_emails;
DROP TABLE notifications;
DROP TABLE quota_changes;
DROP TABLE quota_requests;
