#!/usr/bin/env bash
# Installs what the build, the app and the tests need. Idempotent and quiet when all is there.
set -euo pipefail
source "$(dirname "$0")/env.sh"

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# gcc: C parts of dependencies (ring, mimalloc).
for pkg in gcc postgresql redis-server chromium python3; do
  have_pkg "$pkg" || need_apt+=("$pkg")
done

# The wasm32 standard library: rustup's target where it can be installed, otherwise Debian's
# rustc-web with its std source (built with -Zbuild-std; see docs/notes.md).
wasm_mode=rustup
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  if ! rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    wasm_mode=build-std
    for pkg in rustc-web cargo-web rust-web-src lld-19; do
      have_pkg "$pkg" || need_apt+=("$pkg")
    done
  fi
fi
mkdir -p "$KEYMETER_CACHE"
echo "$wasm_mode" > "$KEYMETER_CACHE/wasm-mode"

if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts a system Redis/PostgreSQL on install; the project runs its own instances.

# wasm-bindgen CLI, exactly the version of the wasm-bindgen crate in Cargo.lock.
wbg_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")
if [ "$("$TOOLS_DIR/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$wbg_version" ]; then
  log "building wasm-bindgen-cli $wbg_version (once; several minutes)"
  CARGO_TARGET_DIR="$KEYMETER_CACHE/tools-build" cargo install -q wasm-bindgen-cli --version "$wbg_version" --root "$TOOLS_DIR" --force
fi

# ECharts, served by the app itself.
if [ ! -f "$ROOT/vendor/node_modules/.package-lock.json" ] || [ "$ROOT/vendor/package-lock.json" -nt "$ROOT/vendor/node_modules/.package-lock.json" ]; then
  log "installing vendored browser libraries (echarts)"
  (cd "$ROOT/vendor" && npm ci --silent --no-audit --no-fund >/dev/null)
fi

# Browser-test dependencies (Playwright drives Debian's Chromium; it downloads no browser).
if [ ! -f "$ROOT/end2end/node_modules/.package-lock.json" ] || [ "$ROOT/end2end/package-lock.json" -nt "$ROOT/end2end/node_modules/.package-lock.json" ]; then
  log "installing end2end npm packages"
  (cd "$ROOT/end2end" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund >/dev/null)
fi
