#!/usr/bin/env bash
# `make bench`: the sample ping route bare and wrapped by the usage tracker + quota manager,
# side by side with the same load generator (wrk), plus the tracker's own time per request
# measured inside the process at 1 and 16 requests in flight. Loopback only.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

bash scripts/setup.sh
if ! command -v wrk >/dev/null; then
  log "installing wrk (the load generator)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  # apt's chatter (debconf notes) is shown only if the install fails.
  apt_errors="$(mktemp)"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>"$apt_errors"; then
    cat "$apt_errors" >&2; exit 1
  fi
  rm -f "$apt_errors"
fi
log "building the server (release)"
cargo build -q --release -p keymeter
BIN="$CARGO_TARGET_DIR/release/keymeter"
DURATION="${BENCH_SECONDS:-10}"

tmp="$(mktemp -d -t keymeter-bench.XXXXXX)"; chmod 755 "$tmp"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  bash scripts/services.sh stop "$tmp/services"; rm -rf "$tmp"
}
trap cleanup EXIT

pg_port=$(free_port); redis_port=$(free_port); app_port=$(free_port)
bash scripts/services.sh start "$tmp/services" "$pg_port" "$redis_port" --ephemeral
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE keymeter"
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/keymeter" REDIS_URL="redis://127.0.0.1:$redis_port"
export KEYMETER_LISTEN="127.0.0.1:$app_port" KEYMETER_BENCH_ROUTES=1 RUST_LOG=warn
"$BIN" migrate >/dev/null
echo 'bench password 1234' | "$BIN" user add --email bench@example.com --role merchant >/dev/null
key=$("$BIN" key create --owner bench@example.com --name bench 2>/dev/null)
key_id=$("$BIN" key list --owner bench@example.com | cut -f1)
"$BIN" quota set --key "$key_id" --per-hour 1000000000000 --per-day 1000000000000 >/dev/null
"$BIN" serve >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$app_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

base="http://127.0.0.1:$app_port"
# CPU seconds used so far by the server, Redis, and PostgreSQL (the postmaster's children).
pg_master=$(head -1 "$tmp/services/pg/postmaster.pid")
redis_pid=$(pgrep -f "redis-server 127.0.0.1:$redis_port" | head -1)
cpu_now() {
  python3 - "$server_pid" "$redis_pid" "$pg_master" <<'PY'
import os, sys
tick = os.sysconf('SC_CLK_TCK')
server, redis, master = sys.argv[1:4]
def stat(pid):
    try:
        s = open(f'/proc/{pid}/stat').read()
    except OSError:
        return None
    f = s[s.rindex(')') + 2:].split()
    return f[1], (int(f[11]) + int(f[12])) / tick  # parent pid, user + system
pg = 0.0
for pid in os.listdir('/proc'):
    st = stat(pid) if pid.isdigit() else None
    if st and (pid == master or st[0] == master):
        pg += st[1]
print(f"{stat(server)[1]:.2f} {stat(redis)[1]:.2f} {pg:.2f}")
PY
}
# Sets $children_cpu: CPU seconds of this shell's finished children so far (the load
# generator). `times` must run in this shell itself, not in a subshell.
children_cpu() {
  times >"$tmp/times"
  children_cpu=$(tail -1 "$tmp/times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
}
# With PINNED set to a CPU list, wrk runs on those CPUs only.
rps() { ${PINNED:+taskset -c "$PINNED"} wrk -t1 -c"$1" -d"${DURATION}s" "${@:2}" | awk '/Requests\/sec/ {print $2}'; }
overhead() { curl -fs "$base/bench/overhead"; }
stored() { "$PG_BIN/psql" -At -h 127.0.0.1 -p "$pg_port" -U postgres -d keymeter -c "SELECT count(*) FROM api_key_usage"; }
# Waits (60 s at most) until the usage writer has stored every event: the count stops moving.
drained() {
  local last=-1 now
  for _ in $(seq 120); do
    now=$(stored); [ "$now" = "$last" ] && return; last=$now; sleep 0.5
  done
}

log "warming up"
wrk -t1 -c16 -d2s "$base/bench/ping" >/dev/null
wrk -t1 -c16 -d2s -H "Authorization: Bearer $key" "$base/api/v1/ping" >/dev/null
overhead >/dev/null

log "throughput, 16 then 64 connections, ${DURATION}s each"
children_cpu; bare_cpu_before="$(cpu_now) $children_cpu"
bare=$(rps 16 "$base/bench/ping")
children_cpu; bare_cpu_after="$(cpu_now) $children_cpu"
wrapped=$(rps 16 -H "Authorization: Bearer $key" "$base/api/v1/ping")
# The writer finishes storing what the load left in the stream: its CPU belongs to the load.
drained
children_cpu; wrapped_cpu_after="$(cpu_now) $children_cpu"
o16=$(overhead)
rps 1 -H "Authorization: Bearer $key" "$base/api/v1/ping" >/dev/null
o1=$(overhead)
# More clients in flight: larger shared batches of quota checks and hand-offs.
bare64=$(rps 64 "$base/bench/ping")
wrapped64=$(rps 64 -H "Authorization: Bearer $key" "$base/api/v1/ping")
drained

# As if Redis and PostgreSQL ran on another machine: they get half the cores, the server and
# wrk the other half (both loads alike). Shows what the server itself adds per request.
ncpu=$(nproc)
split="-"
if [ "$ncpu" -ge 2 ]; then
  log "the same, Redis and PostgreSQL pinned to cores of their own"
  app_cpus="0-$(( ncpu / 2 - 1 ))"; data_cpus="$(( ncpu / 2 ))-$(( ncpu - 1 ))"
  # The postmaster's future backends inherit its affinity; the running ones are set here.
  pin() { for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null; done; }
  cpus=$data_cpus pin "$redis_pid" "$pg_master" $(pgrep -P "$pg_master")
  cpus=$app_cpus pin "$server_pid"
  children_cpu; split_before="$(cpu_now) $children_cpu"
  split_bare=$(PINNED=$app_cpus rps 16 "$base/bench/ping")
  children_cpu; split_mid="$(cpu_now) $children_cpu"
  split_wrapped=$(PINNED=$app_cpus rps 16 -H "Authorization: Bearer $key" "$base/api/v1/ping")
  drained
  children_cpu; split_after="$(cpu_now) $children_cpu"
  split="$split_bare $split_wrapped|$split_before|$split_mid|$split_after"
  cpus="0-$(( ncpu - 1 ))" pin "$redis_pid" "$pg_master" $(pgrep -P "$pg_master") "$server_pid"
fi

# --- Dashboard with history: 30 days x 100,000 requests a day on one key. ---
log "seeding 30 days x 100,000 requests of history (raw events, then hourly and daily rollups from them)"
"$BIN" key create --owner bench@example.com --name history >/dev/null 2>&1
history_id=$("$BIN" key list --owner bench@example.com | awk -F'\t' '$4 == "history" {print $1}')
psql_bench() { "$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d keymeter -v ON_ERROR_STOP=1 "$@"; }
seed_start=$(date +%s)
psql_bench -v key="$history_id" <<'SQL'
SELECT km_ensure_usage_partition(d::date)
FROM generate_series(current_date - 30, current_date - 1, interval '1 day') AS d \g /dev/null
INSERT INTO api_key_usage (request_id, api_key_id, occurred_at, method, endpoint, status, latency_us,
                           bytes_in, bytes_out, throttled, enforced)
SELECT gen_random_uuid(), :'key', day + (i * 0.864) * interval '1 second',
       CASE i % 4 WHEN 1 THEN 'POST' ELSE 'GET' END,
       (ARRAY['/api/v1/ping', '/api/v1/echo', '/api/v1/status/{code}', '/api/v1/delay/{ms}'])[1 + i % 4],
       CASE WHEN i % 200 = 7 THEN 429 WHEN i % 4 = 2 AND i % 20 = 2 THEN 404 WHEN i % 4 = 2 AND i % 50 = 6 THEN 500 ELSE 200 END,
       300 + (i::bigint * 7919) % 40000, CASE i % 4 WHEN 1 THEN 512 ELSE 0 END, 64, i % 200 = 7, true
FROM generate_series(current_date - 30, current_date - 1, interval '1 day') AS day,
     generate_series(0, 99999) AS i;
INSERT INTO api_key_usage_hour (api_key_id, period_start, method, endpoint, status, requests, throttled,
                                bytes_in, bytes_out, latency_hist)
SELECT api_key_id, date_trunc('hour', occurred_at), method, endpoint, status,
       count(*) FILTER (WHERE NOT throttled), count(*) FILTER (WHERE throttled), sum(bytes_in), sum(bytes_out), '{}'
FROM api_key_usage WHERE api_key_id = :'key' GROUP BY 1, 2, 3, 4, 5;
WITH buckets AS (
    SELECT date_trunc('hour', occurred_at) AS h, method, endpoint, status,
           floor(ln(greatest(latency_us, 1)) / ln(1.02))::int AS bucket, count(*) AS n
    FROM api_key_usage WHERE api_key_id = :'key' AND NOT throttled GROUP BY 1, 2, 3, 4, 5
), hists AS (
    SELECT h, method, endpoint, status, jsonb_object_agg(bucket::text, n) AS hist FROM buckets GROUP BY 1, 2, 3, 4
)
UPDATE api_key_usage_hour u SET latency_hist = hists.hist FROM hists
WHERE u.api_key_id = :'key' AND u.period_start = hists.h AND u.method = hists.method
  AND u.endpoint = hists.endpoint AND u.status = hists.status;
-- The daily rollups the writer keeps beside the hourly ones (the usage page's breakdowns).
WITH buckets AS (
    SELECT date_trunc('day', period_start, 'UTC') AS d, method, endpoint, status, b.key AS bucket,
           sum(b.value::bigint) AS n
    FROM api_key_usage_hour, jsonb_each_text(latency_hist) AS b WHERE api_key_id = :'key' GROUP BY 1, 2, 3, 4, 5
), hists AS (
    SELECT d, method, endpoint, status, jsonb_object_agg(bucket, n) AS hist FROM buckets GROUP BY 1, 2, 3, 4
)
INSERT INTO api_key_usage_day (api_key_id, period_start, method, endpoint, status, requests, throttled,
                               bytes_in, bytes_out, latency_hist)
SELECT h.api_key_id, date_trunc('day', h.period_start, 'UTC') AS d, h.method, h.endpoint, h.status,
       sum(h.requests), sum(h.throttled), sum(h.bytes_in), sum(h.bytes_out), coalesce(min(hists.hist::text), '{}')::jsonb
FROM api_key_usage_hour h
LEFT JOIN hists ON hists.d = date_trunc('day', h.period_start, 'UTC') AND hists.method = h.method
     AND hists.endpoint = h.endpoint AND hists.status = h.status
WHERE h.api_key_id = :'key' GROUP BY 1, 2, 3, 4, 5;
ANALYZE;
SQL
seed_secs=$(( $(date +%s) - seed_start ))
curl -fs -c "$tmp/cookies" -H 'accept: text/html' -o /dev/null \
  --data-urlencode 'email=bench@example.com' --data-urlencode 'password=bench password 1234' "$base/rpc/auth/login"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { for _ in 1 2 3 4 5; do curl -fs -o /dev/null -w '%{time_total}\n' -b "$tmp/cookies" -H 'accept: text/html' "$1"; done | median; }
month_from=$(date -u -d '30 days ago' +%F); month_to=$(date -u -d 'yesterday' +%F)
page_s=$(timed "$base/dashboard/developers/api-keys/$history_id/usage")
csv_day_s=$(timed "$base/dashboard/developers/api-keys/$history_id/usage.csv?from=$month_from&to=$month_to&granularity=day")
csv_hour_s=$(timed "$base/dashboard/developers/api-keys/$history_id/usage.csv?from=$month_from&to=$month_to&granularity=hour")
csv_rows=$(curl -fs -b "$tmp/cookies" "$base/dashboard/developers/api-keys/$history_id/usage.csv?from=$month_from&to=$month_to&granularity=hour" | wc -l)

python3 - "$bare" "$wrapped" "$o1" "$o16" "$page_s" "$csv_day_s" "$csv_hour_s" "$csv_rows" "$seed_secs" \
  "$bare_cpu_before" "$bare_cpu_after" "$wrapped_cpu_after" "$DURATION" "$bare64" "$wrapped64" "$split" <<'PY'
import json, sys
bare, wrapped = float(sys.argv[1]), float(sys.argv[2])
bare64, wrapped64 = float(sys.argv[14]), float(sys.argv[15])
o1, o16 = json.loads(sys.argv[3]), json.loads(sys.argv[4])
page, csv_day, csv_hour, csv_rows, seed = map(float, sys.argv[5:10])
cpu = [list(map(float, a.split())) for a in sys.argv[10:13]]
secs = float(sys.argv[13])
def per_request(rate, before, after):
    """CPU µs per request of each process between two readings, over a load at `rate`."""
    return [(a - b) * 1e6 / (rate * secs) for a, b in zip(after, before)]
print()
print(f"{'route':<38}{'requests/s':>12}")
print(f"{'GET /bench/ping (bare)':<38}{bare:>12.0f}")
print(f"{'GET /api/v1/ping (tracked + quota)':<38}{wrapped:>12.0f}")
print(f"ratio wrapped/bare: {wrapped / bare:.1%}")
print()
print(f"{'same, 64 connections':<38}{'requests/s':>12}")
print(f"{'GET /bench/ping (bare)':<38}{bare64:>12.0f}")
print(f"{'GET /api/v1/ping (tracked + quota)':<38}{wrapped64:>12.0f}")
print(f"ratio wrapped/bare: {wrapped64 / bare64:.1%}")
print()
print("CPU per request, µs (server, Redis, PostgreSQL, load generator):")
totals = []
for name, rate, before, after in (("bare", bare, cpu[0], cpu[1]), ("tracked", wrapped, cpu[1], cpu[2])):
    per = per_request(rate, before, after)
    print(f"  {name:<8} " + "  ".join(f"{p:6.1f}" for p in per) + f"   total {sum(per):6.1f}")
    totals.append(sum(per))
# Both loads fill the two cores, so a ratio r needs a tracked request to cost at most 1/r of
# a bare one's CPU.
print(f"  70 % of bare allows {totals[0] / 0.7:.1f} per tracked request: {totals[0] / 0.7 - totals[0]:.1f} above bare "
      f"for all that tracking adds (measured: {totals[1] - totals[0]:.1f})")
if sys.argv[16] != "-":
    rates, *marks = sys.argv[16].split("|")
    split_bare, split_wrapped = map(float, rates.split())
    marks = [list(map(float, m.split())) for m in marks]
    print()
    print("Redis and PostgreSQL pinned to half the cores, the server and wrk to the other half, 16 connections:")
    print(f"{'GET /bench/ping (bare)':<38}{split_bare:>12.0f}")
    print(f"{'GET /api/v1/ping (tracked + quota)':<38}{split_wrapped:>12.0f}")
    print(f"ratio wrapped/bare: {split_wrapped / split_bare:.1%}")
    app = []
    for name, rate, before, after in (("bare", split_bare, marks[0], marks[1]), ("tracked", split_wrapped, marks[1], marks[2])):
        per = per_request(rate, before, after)
        print(f"  CPU µs per request, {name:<8} server {per[0]:6.1f}  wrk {per[3]:6.1f}   (Redis {per[1]:.1f}, PostgreSQL {per[2]:.1f})")
        app.append(per[0] + per[3])
    print(f"  on the server's cores, 70 % of bare allows {app[0] / 0.7 - app[0]:.1f} above bare per request "
          f"(measured: {app[1] - app[0]:.1f})")
print()
print("tracker's own time per request (in process; excludes the handler):")
for name, o in (("1 in flight", o1), ("16 in flight", o16)):
    print(f"  {name:<14} p50 {o['p50_us']:7.1f} µs   p99 {o['p99_us']:7.1f} µs   ({o['count']} requests)")
print()
print(f"dashboard over 30 days x 100,000 requests/day on one key (3,000,000 events; seeded in {seed:.0f} s):")
print(f"  usage page, server response (median of 5)     {page * 1000:7.0f} ms")
print(f"  CSV export of the month, per day (median)     {csv_day * 1000:7.0f} ms")
print(f"  CSV export of the month, per hour (median)    {csv_hour * 1000:7.0f} ms   ({csv_rows - 1:.0f} rows)")
PY
