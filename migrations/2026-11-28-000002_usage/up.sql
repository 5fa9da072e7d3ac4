-- Latency histograms are sparse JSON objects {"<bucket index>": count}; see services/src/usage/histogram.rs.
CREATE FUNCTION km_hist_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(k, total), '{}'::jsonb)
    FROM (
        SELECT k, sum(v::bigint) AS total
        FROM (
            SELECT key AS k, value AS v FROM jsonb_each_text(coalesce(a, '{}'::jsonb))
            UNION ALL
            SELECT key, value FROM jsonb_each_text(coalesce(b, '{}'::jsonb))
        ) parts
        GROUP BY k
    ) sums
$$;

CREATE AGGREGATE km_hist_sum(jsonb) (SFUNC = km_hist_merge, STYPE = jsonb, INITCOND = '{}');

-- ApiKeyUsage: one row per metered request, partitioned by UTC day so that old days are
-- dropped cheaply (retention) while the rollups stay. Idempotent on request_id.
CREATE TABLE api_key_usage (
    request_id   UUID NOT NULL,
    api_key_id   UUID NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    method       TEXT NOT NULL,
    endpoint     TEXT NOT NULL,
    status       SMALLINT NOT NULL,
    latency_us   BIGINT NOT NULL,
    bytes_in     BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    throttled    BOOLEAN NOT NULL,
    enforced     BOOLEAN NOT NULL,
    PRIMARY KEY (request_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX api_key_usage_key_time_idx ON api_key_usage (api_key_id, occurred_at);

-- Rollups per minute (recent detail) and per hour (history: breakdowns and CSV exports read
-- these, so months of data stay fast). `requests` counts admitted calls, `throttled` counts
-- quota rejections (status 429, not admitted).
CREATE TABLE api_key_usage_minute (
    api_key_id   UUID NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    method       TEXT NOT NULL,
    endpoint     TEXT NOT NULL,
    status       SMALLINT NOT NULL,
    requests     BIGINT NOT NULL,
    throttled    BIGINT NOT NULL,
    bytes_in     BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    latency_hist JSONB NOT NULL,
    PRIMARY KEY (api_key_id, period_start, method, endpoint, status)
);

CREATE TABLE api_key_usage_hour (LIKE api_key_usage_minute INCLUDING ALL);

-- Creates the partition of api_key_usage for one UTC day, if missing. Serialised with an
-- advisory lock so that several writers can call it at once.
CREATE FUNCTION km_ensure_usage_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := format('api_key_usage_p%s', to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('km_ensure_usage_partition'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF api_key_usage FOR VALUES FROM (%L) TO (%L)',
            name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC')
        );
    END IF;
END
$$;

-- Drops raw-event partitions of days before `keep_from` (retention); rollups are untouched.
-- Returns how many partitions were dropped.
CREATE FUNCTION km_drop_usage_partitions_before(keep_from date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'api_key_usage' AND c.relname ~ '^api_key_usage_p[0-9]{8}$'
    LOOP
        IF to_date(substring(part.relname from 16 for 8), 'YYYYMMDD') < keep_from THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;
