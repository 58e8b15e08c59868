#!/usr/bin/env bash
# Builds the Rust guest functions into WebAssembly components of the tars:guest `function` world.
#
#   guests/examples/build.sh [OUT_DIR [CRATE_DIR ...]]
#
# OUT_DIR defaults to guests/examples/build (ignored by git); CRATE_DIR defaults to guests/examples/rust.
# Each crate's component is written to OUT_DIR/<package name>.wasm. Installs the wasm32-wasip2 target
# with rustup when it is missing; crates come from crates.io, pinned by each crate's Cargo.lock. The
# cargo target directory is shared and kept outside the repository (~/.cache/tars/cargo-target), so a
# second build only recompiles what changed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/build}
if [ $# -gt 0 ]; then shift; fi
crates=("$@")
if [ ${#crates[@]} -eq 0 ]; then crates=("$here/rust"); fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TARS_CACHE_DIR:-$HOME/.cache/tars}/cargo-target}

if ! command -v cargo >/dev/null; then
  echo "build.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

mkdir -p "$out"
for crate in "${crates[@]}"; do
  crate=$(cd "$crate" && pwd)
  package=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$crate/Cargo.toml" | head -n 1)
  (cd "$crate" && cargo build --quiet --locked --release --target wasm32-wasip2)
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/${package//-/_}.wasm" "$out/$package.wasm.tmp"
  mv "$out/$package.wasm.tmp" "$out/$package.wasm"
  echo "$out/$package.wasm"
done
