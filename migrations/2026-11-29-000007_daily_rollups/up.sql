-- Daily rollups, written by the usage writer with the minute and hourly ones: the usage page's
-- daily, weekly and monthly breakdowns read a year of days instead of a year of hours (24 times
-- fewer rows; a busy key's page took seconds and held the server's workers meanwhile).
CREATE TABLE api_key_usage_day (LIKE api_key_usage_hour INCLUDING ALL);

-- The days so far, from the hourly rollups (histograms summed bucket by bucket).
WITH totals AS (
    SELECT api_key_id, date_trunc('day', period_start, 'UTC') AS day, method, endpoint, status,
           sum(requests) AS requests, sum(throttled) AS throttled,
           sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out
    FROM api_key_usage_hour
    GROUP BY 1, 2, 3, 4, 5
), buckets AS (
    SELECT api_key_id, date_trunc('day', period_start, 'UTC') AS day, method, endpoint, status,
           b.key AS bucket, sum(b.value::bigint) AS n
    FROM api_key_usage_hour, jsonb_each_text(latency_hist) AS b
    GROUP BY 1, 2, 3, 4, 5, 6
), histograms AS (
    SELECT api_key_id, day, method, endpoint, status, jsonb_object_agg(bucket, n) AS latency_hist
    FROM buckets
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO api_key_usage_day
    (api_key_id, period_start, method, endpoint, status, requests, throttled, bytes_in, bytes_out, latency_hist)
SELECT t.api_key_id, t.day, t.method, t.endpoint, t.status, t.requests, t.throttled, t.bytes_in, t.bytes_out,
       coalesce(h.latency_hist, '{}'::jsonb)
FROM totals t
LEFT JOIN histograms h USING (api_key_id, day, method, endpoint, status);
