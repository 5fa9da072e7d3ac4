#!/usr/bin/env bash
# `make test`: every test against real PostgreSQL and Redis started here on free ports, in a
# temporary directory, stopped at the end whatever happens. Arguments go to Playwright (e.g.
# `KEYMETER_ONLY_BROWSER_TESTS=1 bash scripts/test.sh tests/api_keys.spec.ts`).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

bash scripts/setup.sh
bash scripts/build.sh

tmp="$(mktemp -d -t keymeter-test.XXXXXX)"
chmod 755 "$tmp"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  bash scripts/services.sh stop "$tmp/services"
  bash scripts/services.sh stop "$tmp/cluster"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_port=$(free_port); redis_port=$(free_port)
log "starting test PostgreSQL (:$pg_port) and Redis (:$redis_port)"
bash scripts/services.sh start "$tmp/services" "$pg_port" "$redis_port" --ephemeral
pg="postgres://postgres@127.0.0.1:$pg_port"
export KEYMETER_TEST_PG="$pg"
export KEYMETER_TEST_REDIS="redis://127.0.0.1:$redis_port"
export KEYMETER_TEST_REDIS_SOCKET="redis+unix://$tmp/services/redis.sock"

# Every test database is a copy of this migrated template.
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE keymeter_template"
DATABASE_URL="$pg/keymeter_template" REDIS_URL="$KEYMETER_TEST_REDIS" "$SERVER_BIN" migrate >/dev/null

if [ -z "${KEYMETER_ONLY_BROWSER_TESTS:-}" ]; then
  # The quota and usage tests also run against a 3-primary Redis Cluster.
  cluster_ports=("$(free_port)" "$(free_port)" "$(free_port)")
  log "starting a test Redis Cluster (:${cluster_ports[*]})"
  bash scripts/services.sh cluster-start "$tmp/cluster" "${cluster_ports[@]}"
  KEYMETER_TEST_REDIS_CLUSTER="$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")"
  export KEYMETER_TEST_REDIS_CLUSTER="${KEYMETER_TEST_REDIS_CLUSTER%,}"

  log "Rust unit and integration tests"
  RUST_BACKTRACE=0 cargo test -q
fi

log "browser tests"
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE keymeter_e2e TEMPLATE keymeter_template"
app_port=$(free_port)
export DATABASE_URL="$pg/keymeter_e2e" REDIS_URL="$KEYMETER_TEST_REDIS" KEYMETER_LISTEN="127.0.0.1:$app_port" KEYMETER_MAIL_DIR="$tmp/mail"
"$SERVER_BIN" demo seed >/dev/null
"$SERVER_BIN" serve >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$app_port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
export KEYMETER_BASE_URL="http://127.0.0.1:$app_port" KEYMETER_BIN="$SERVER_BIN"
if ! (cd end2end && npx playwright test "$@"); then
  echo "--- server log ---" >&2; tail -n 50 "$tmp/server.log" >&2
  exit 1
fi
