#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis on loopback, data under a directory of our own.
#   services.sh start DIR PG_PORT REDIS_PORT [--ephemeral]
#   services.sh cluster-start DIR PORT1 PORT2 PORT3...   a Redis Cluster, one primary per port
#   services.sh stop DIR                                 stops everything started in DIR
# --ephemeral: no durability (fsync off, no Redis snapshots), and PostgreSQL also serves TLS with
# the test certificate: for tests. The cluster is always ephemeral: it holds test data only and
# is rebuilt from scratch unless it is already up.
set -euo pipefail
source "$(dirname "$0")/env.sh"

cmd="${1:?usage: services.sh start|cluster-start|stop DIR ...}"
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
    if [ "$ephemeral" = --ephemeral ]; then
      opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
      # TLS beside plain connections, with the test certificate for 127.0.0.1 (tests of
      # `sslmode=require`); PostgreSQL wants its key readable by its own user only.
      cp "$ROOT/server/tests/fixtures/smtp-test-server.pem" "$dir/pg-tls.pem"
      cp "$ROOT/server/tests/fixtures/smtp-test-server.key" "$dir/pg-tls.key"
      chmod 600 "$dir/pg-tls.key"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/pg-tls.pem" "$dir/pg-tls.key"
      opts="$opts -c ssl=on -c ssl_cert_file=$dir/pg-tls.pem -c ssl_key_file=$dir/pg-tls.key"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null
  fi
  if [ -f "$dir/redis.pid" ] && ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then rm -f "$dir/redis.pid"; fi
  if [ ! -f "$dir/redis.pid" ] && port_busy "$redis_port"; then
    echo "error: port $redis_port is taken by another program; choose another port (or set REDIS_URL)" >&2
    exit 1
  fi
  if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    local extra=(--save "60 1" --dir "$dir")
    # Throwaway instances also listen on a Unix socket (tests of `redis+unix://`).
    [ "$ephemeral" = --ephemeral ] && extra=(--save "" --unixsocket "$(cd "$dir" && pwd)/redis.sock" --unixsocketperm 700)
    redis-server --port "$redis_port" --bind 127.0.0.1 "${extra[@]}" --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

# True when every node of ours answers and the cluster covers all slots.
cluster_up() {
  local port
  for port in "$@"; do
    [ -f "$dir/cluster-$port/redis.pid" ] && kill -0 "$(cat "$dir/cluster-$port/redis.pid")" 2>/dev/null || return 1
    redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

cluster_start() {
  [ $# -ge 3 ] || { echo "usage: services.sh cluster-start DIR PORT1 PORT2 PORT3..." >&2; exit 2; }
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  cluster_up "$@" && return 0
  # A half-made cluster (a node died, creation failed) is not worth repairing: start over.
  cluster_stop
  local port node bus nodes=()
  if [ "$(printf '%s\n' "$@" | sort -u | wc -l)" -ne $# ]; then
    echo "error: cluster ports must differ: $*" >&2
    exit 1
  fi
  for port in "$@"; do
    if port_busy "$port"; then
      echo "error: port $port is taken by another program; choose other cluster ports" >&2
      exit 1
    fi
  done
  for port in "$@"; do
    node="$dir/cluster-$port"
    rm -rf "$node" && mkdir -p "$node"
    # The cluster bus would default to PORT+10000, which may be taken or past 65535.
    bus="$(free_port)"
    while printf '%s\n' "$@" | grep -qx "$bus"; do bus="$(free_port)"; done
    # In a file, so that a node can be started again as it was (`redis-server DIR/cluster-PORT/redis.conf`).
    cat >"$node/redis.conf" <<EOF
port $port
bind 127.0.0.1
cluster-enabled yes
cluster-port $bus
cluster-config-file "$node/nodes.conf"
dir "$node"
save ""
appendonly no
daemonize yes
pidfile "$node/redis.pid"
logfile "$node/redis.log"
EOF
    redis-server "$node/redis.conf" >/dev/null
    nodes+=("127.0.0.1:$port")
  done
  for port in "$@"; do
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/cluster-create.log" 2>&1; then
    echo "error: redis-cli --cluster create failed:" >&2; tail -n 20 "$dir/cluster-create.log" >&2
    exit 1
  fi
  for _ in $(seq 100); do cluster_up "$@" && return 0; sleep 0.1; done
  echo "error: the Redis Cluster on ports $* did not reach cluster_state:ok (logs in $dir/cluster-*)" >&2
  exit 1
}

cluster_stop() {
  local pidfile pid
  for pidfile in "$dir"/cluster-*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    # Wait, so that a restart on the same ports finds them free.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
}

stop() {
  [ -d "$dir" ] || return 0
  cluster_stop
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
  cluster-start) shift 2; cluster_start "$@" ;;
  stop) stop ;;
  *) echo "usage: services.sh start|cluster-start|stop DIR ..." >&2; exit 2 ;;
esac
