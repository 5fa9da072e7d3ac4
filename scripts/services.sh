#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis on loopback, data under a directory of our own.
#   services.sh start DIR PG_PORT REDIS_PORT [--ephemeral]
#   services.sh stop DIR
# --ephemeral: no durability (fsync off, no Redis snapshots), for tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"

cmd="${1:?usage: services.sh start|stop DIR ...}"
dir="${2:?data directory}"

port_busy() {
  python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

start() {
  local pg_port="$1" redis_port="$2" ephemeral="${3:-}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local pgdata="$dir/pg" sock="$dir/pg-socket"
  mkdir -p "$sock"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir" "$sock"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    as_pg mkdir -p "$pgdata"
    as_pg "$PG_BIN/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 --no-sync >/dev/null
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    if port_busy "$pg_port"; then
      echo "error: port $pg_port is taken by another program; choose another port (or set DATABASE_URL)" >&2
      exit 1
    fi
    local opts="-p $pg_port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=300"
    [ "$ephemeral" = --ephemeral ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null
  fi
  if [ -f "$dir/redis.pid" ] && ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then rm -f "$dir/redis.pid"; fi
  if [ ! -f "$dir/redis.pid" ] && port_busy "$redis_port"; then
    echo "error: port $redis_port is taken by another program; choose another port (or set REDIS_URL)" >&2
    exit 1
  fi
  if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    local save=(--save "60 1" --dir "$dir")
    [ "$ephemeral" = --ephemeral ] && save=(--save "")
    redis-server --port "$redis_port" --bind 127.0.0.1 "${save[@]}" --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

stop() {
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pg/PG_VERSION" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/redis.pid" ]; then
    kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    rm -f "$dir/redis.pid"
  fi
}

case "$cmd" in
  start) shift 2; start "$@" ;;
  stop) stop ;;
  *) echo "usage: services.sh start|stop DIR ..." >&2; exit 2 ;;
esac
