#!/usr/bin/env bash
# `make bench`: the sample ping route bare and wrapped by the usage tracker + quota manager,
# side by side with the same load generator (wrk), plus the tracker's own time per request
# measured inside the process at 1 and 16 requests in flight. Loopback only.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

bash scripts/setup.sh
command -v wrk >/dev/null || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq wrk >/dev/null; }
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
rps() { wrk -t1 -c"$1" -d"${DURATION}s" "${@:2}" | awk '/Requests\/sec/ {print $2}'; }
overhead() { curl -fs "$base/bench/overhead"; }

log "warming up"
wrk -t1 -c16 -d2s "$base/bench/ping" >/dev/null
wrk -t1 -c16 -d2s -H "Authorization: Bearer $key" "$base/api/v1/ping" >/dev/null
overhead >/dev/null

log "throughput, 16 connections, ${DURATION}s each"
bare=$(rps 16 "$base/bench/ping")
wrapped=$(rps 16 -H "Authorization: Bearer $key" "$base/api/v1/ping")
o16=$(overhead)
rps 1 -H "Authorization: Bearer $key" "$base/api/v1/ping" >/dev/null
o1=$(overhead)

python3 - "$bare" "$wrapped" "$o1" "$o16" <<'PY'
import json, sys
bare, wrapped = float(sys.argv[1]), float(sys.argv[2])
o1, o16 = json.loads(sys.argv[3]), json.loads(sys.argv[4])
print()
print(f"{'route':<38}{'requests/s':>12}")
print(f"{'GET /bench/ping (bare)':<38}{bare:>12.0f}")
print(f"{'GET /api/v1/ping (tracked + quota)':<38}{wrapped:>12.0f}")
print(f"ratio wrapped/bare: {wrapped / bare:.1%}")
print()
print("tracker's own time per request (in process; excludes the handler):")
for name, o in (("1 in flight", o1), ("16 in flight", o16)):
    print(f"  {name:<14} p50 {o['p50_us']:7.1f} µs   p99 {o['p99_us']:7.1f} µs   ({o['count']} requests)")
PY
