#!/usr/bin/env bash
# `make run`: install, build, start local PostgreSQL and Redis unless DATABASE_URL/REDIS_URL are
# set, migrate, seed the demo accounts, and serve http://127.0.0.1:3000 until Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

bash scripts/setup.sh
bash scripts/build.sh

data="$ROOT/.data"
started_services=""
cleanup() {
  if [ -n "$started_services" ]; then
    log "stopping local PostgreSQL and Redis"
    bash scripts/services.sh stop "$data"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  # KEYMETER_PG_PORT / KEYMETER_REDIS_PORT move them if these ports are taken.
  pg_port="${KEYMETER_PG_PORT:-55432}"; redis_port="${KEYMETER_REDIS_PORT:-56379}"
  log "starting local PostgreSQL (:$pg_port) and Redis (:$redis_port), data in .data/"
  started_services=1
  bash scripts/services.sh start "$data" "$pg_port" "$redis_port"
  if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='keymeter'" | grep -q 1; then
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE keymeter"
  fi
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:$pg_port/keymeter}"
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$redis_port}"
fi

"$SERVER_BIN" migrate
log "demo accounts"
mkdir -p "$data"
"$SERVER_BIN" demo seed --secret-file "$data/demo-key.secret"
# Light traffic on the demo key keeps the charts moving; KEYMETER_DEMO_TRAFFIC=false stops it.
export KEYMETER_DEMO_TRAFFIC_KEY_FILE="${KEYMETER_DEMO_TRAFFIC_KEY_FILE:-$data/demo-key.secret}"
if [ -z "${SMTP_URL:-}" ]; then
  export KEYMETER_MAIL_DIR="${KEYMETER_MAIL_DIR:-$data/mail}"
  log "no SMTP_URL: emails are written to $KEYMETER_MAIL_DIR"
fi
log "keymeter at http://${KEYMETER_LISTEN:-127.0.0.1:3000}  (Ctrl-C stops it)"
"$SERVER_BIN" serve
