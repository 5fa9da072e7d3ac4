#!/usr/bin/env bash
# Builds the browser bundle (WASM + JS + CSS) into $KEYMETER_SITE_ROOT/pkg and the server binary.
#   build.sh            both
#   build.sh frontend   only the bundle
#   build.sh server     only the server
set -euo pipefail
source "$(dirname "$0")/env.sh"
what="${1:-all}"
cd "$ROOT"
prune_build_dirs

# `leptos_debuginfo`: a hydration mismatch names the view it happened in (a few KB more).
WASM_RUSTFLAGS="--cfg leptos_debuginfo"

build_frontend() {
  local mode pkg wasm
  mode=$(cat "$KEYMETER_CACHE/wasm-mode" 2>/dev/null || echo rustup)
  pkg="$KEYMETER_SITE_ROOT/pkg"
  log "building the browser bundle ($mode)"
  if [ "$mode" = build-std ]; then
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="$WASM_RUSTFLAGS" \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
      /usr/bin/cargo build -q --profile wasm-release -p keymeter-frontend --lib \
        --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort
  else
    RUSTFLAGS="$WASM_RUSTFLAGS" CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
      cargo build -q --profile wasm-release -p keymeter-frontend --lib --target wasm32-unknown-unknown
  fi
  wasm="$WASM_TARGET_DIR/wasm32-unknown-unknown/wasm-release/keymeter_frontend.wasm"
  mkdir -p "$pkg"
  if [ ! -f "$pkg/keymeter_bg.wasm" ] || [ "$wasm" -nt "$pkg/keymeter_bg.wasm" ]; then
    wasm-bindgen --target web --no-typescript --remove-name-section \
      --out-dir "$pkg" --out-name keymeter "$wasm"
    gzip -kf9 "$pkg/keymeter_bg.wasm" "$pkg/keymeter.js"
  fi
  cp style/main.css "$pkg/keymeter.css"
  gzip -kf9 "$pkg/keymeter.css"
  if [ ! -f "$pkg/echarts.min.js.gz" ] || [ vendor/node_modules/echarts/dist/echarts.min.js -nt "$pkg/echarts.min.js.gz" ]; then
    cp vendor/node_modules/echarts/dist/echarts.min.js "$pkg/echarts.min.js"
    gzip -kf9 "$pkg/echarts.min.js"
  fi
}

build_server() {
  log "building the server"
  cargo build -q -p keymeter
}

case "$what" in
  frontend) build_frontend ;;
  server) build_server ;;
  all) build_frontend; build_server ;;
  *) echo "usage: build.sh [frontend|server|all]" >&2; exit 2 ;;
esac
