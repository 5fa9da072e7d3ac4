# Shared settings for the project's scripts; sourced, not run.
# Build output lives outside the clone so that fresh clones (CI) reuse warm builds.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYMETER_CACHE="${KEYMETER_CACHE:-$HOME/.cache/keymeter}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KEYMETER_CACHE/target}"
WASM_TARGET_DIR="${WASM_TARGET_DIR:-$KEYMETER_CACHE/target-wasm}"
TOOLS_DIR="$KEYMETER_CACHE/tools"
export PATH="$TOOLS_DIR/bin:$HOME/.cargo/bin:$PATH"
export KEYMETER_SITE_ROOT="${KEYMETER_SITE_ROOT:-$ROOT/target/site}"
# Set at compile time this would change the bundle's file names (see docs/notes.md).
unset LEPTOS_OUTPUT_NAME
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
SERVER_BIN="$CARGO_TARGET_DIR/debug/keymeter"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Runs a command as the postgres system user when we are root (initdb refuses root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The shared build directory outlives clones and grows with every change (one test binary and
# one incremental cache per crate version): 66 GB after a day of sessions filled the disk.
# Drops what no build has touched for a day.
prune_build_dirs() {
  local dir
  for dir in "$CARGO_TARGET_DIR" "$WASM_TARGET_DIR"; do
    [ -d "$dir" ] || continue
    find "$dir" -maxdepth 4 -path '*/deps/*' -type f -perm -u+x ! -name '*.so' ! -name '*.rlib' \
      -mtime +0 -delete 2>/dev/null || true
    # Each change of a crate links a new test binary (~400 MB each) beside the old ones: 30 GB of
    # superseded ones in one session filled the disk. Only the newest of each name is kept
    # (cargo links an older one again if its sources ever come back), three of `keymeter` (the
    # server, its library's tests and its binary's tests share the name).
    local deps
    for deps in "$dir"/*/deps; do
      [ -d "$deps" ] || continue
      find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.so' ! -name '*.rlib' ! -name '*.d' \
        -printf '%T@ %f\n' 2>/dev/null | sort -rn |
        awk '{name = $2; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++ >= (name == "keymeter" ? 3 : 1)) print $2}' |
        while read -r old; do rm -f "$deps/$old"; done
    done
    find "$dir" -mindepth 3 -maxdepth 3 -path '*/incremental/*' -type d -mtime +0 \
      -exec rm -rf {} + 2>/dev/null || true
    # A busy day fills the disk within the day (30 GB of incremental caches in session 16, and a
    # link then dies of SIGBUS): below 15 GB free, those untouched for an hour go too (not
    # newer ones: a build running beside this one may be writing them); builds get slower.
    local free_kb
    free_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 {print $4}')
    if [ -n "$free_kb" ] && [ "$free_kb" -lt 15000000 ]; then
      log "less than 15 GB free: dropping incremental build caches unused for an hour in $dir"
      find "$dir" -mindepth 3 -maxdepth 4 -path '*/incremental/*' -type d -mmin +60 \
        -exec rm -rf {} + 2>/dev/null || true
    fi
  done
}
