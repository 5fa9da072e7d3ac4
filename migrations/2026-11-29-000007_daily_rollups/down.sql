DROP TABLE api_key_usage_day;
