CREATE OR REPLACE FUNCTION km_ensure_usage_partition(day date) RETURNS void
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
