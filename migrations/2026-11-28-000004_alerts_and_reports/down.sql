DROP TABLE monthly_reports;
DROP TABLE outbound_email_attachments;
DROP TABLE quota_alerts;
ALTER TABLE api_keys DROP COLUMN alert_email_thresholds;
