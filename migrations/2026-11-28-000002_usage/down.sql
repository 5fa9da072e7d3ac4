DROP FUNCTION km_drop_usage_partitions_before(date);
DROP FUNCTION km_ensure_usage_partition(date);
DROP TABLE api_key_usage_hour;
DROP TABLE api_key_usage_minute;
DROP TABLE api_key_usage;
DROP AGGREGATE km_hist_sum(jsonb);
DROP FUNCTION km_hist_merge(jsonb, jsonb);
