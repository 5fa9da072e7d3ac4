#!/usr/bin/env bash
# `make reliability`: real server processes under load, one fault at a time (Redis down, Redis
# paused with fail-closed, PostgreSQL down, an instance killed with SIGKILL), each checked
# request by request, then one table. Everything runs on loopback, on services started here.
#   KEYMETER_PG_DOWN_SECS (60), KEYMETER_REDIS_DOWN_SECS (8) set the outages' length.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

bash scripts/setup.sh
log "building the server and the fault scenarios"
cargo build -q -p keymeter
cargo test -q --no-run --test reliability 2>/dev/null

tmp="$(mktemp -d -t keymeter-reliability.XXXXXX)"; chmod 755 "$tmp"
cleanup() { bash scripts/services.sh stop "$tmp/services"; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(free_port); redis_port=$(free_port)
# Durable PostgreSQL (no --ephemeral): the PostgreSQL-down fault is a crash (`stop -m immediate`),
# and with fsync or synchronous commit off a crash loses commits the writer already acknowledged.
bash scripts/services.sh start "$tmp/services" "$pg_port" "$redis_port"
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE keymeter_template"
DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/keymeter_template" REDIS_URL="redis://127.0.0.1:$redis_port" \
  "$SERVER_BIN" migrate >/dev/null

export KEYMETER_TEST_PG="postgres://postgres@127.0.0.1:$pg_port" KEYMETER_TEST_REDIS="redis://127.0.0.1:$redis_port"
export KEYMETER_RELIABILITY_REPORT="$tmp/report.tsv"
# How the PostgreSQL-down scenario stops and restarts this run's PostgreSQL.
export KEYMETER_PG_STOP="source '$ROOT/scripts/env.sh' && as_pg \"\$PG_BIN/pg_ctl\" -D '$tmp/services/pg' stop -m immediate -w"
export KEYMETER_PG_START="bash '$ROOT/scripts/services.sh' start '$tmp/services' $pg_port $redis_port"

log "fault scenarios (about $(( ${KEYMETER_PG_DOWN_SECS:-60} + 120 )) s)"
status=0
RUST_BACKTRACE=0 cargo test -q --test reliability -- --ignored --test-threads=1 reliability_ >"$tmp/test.log" 2>&1 || status=$?

printf '\n'
{
  printf 'fault\tsent\tanswered\t200\t429\t503\tadmitted/limit\tstored/answered\tmissing\trollups≠events\t500s\n'
  cat "$KEYMETER_RELIABILITY_REPORT" 2>/dev/null || true
} | column -t -s $'\t'
printf '\nmissing: answered requests whose usage event is not in PostgreSQL; stored counts events of\nrequests in flight too. 503s are fail-closed refusals by design; 500s must be 0.\n'
if [ "$status" -ne 0 ]; then
  echo "--- scenario failures ---" >&2
  grep -E "panicked|assert|FAILED" -A4 "$tmp/test.log" >&2 || tail -n 40 "$tmp/test.log" >&2
  for f in "$tmp"/report.tsv.server-*.log; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last lines) ---" >&2; tail -n 15 "$f" >&2; }
  done
  exit "$status"
fi
