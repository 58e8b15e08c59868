#!/usr/bin/env bash
# Builds the node-agent's native data plane (node-agent/native: the `tars_native` Python extension and
# the `tars-refhost` reference host bench/sandbox.py measures against) and installs the extension.
#
#   hack/build-native.sh
#
# Crates come from crates.io, pinned by Cargo.lock. The cargo target directory is kept outside the
# repository (~/.cache/tars/cargo-target-native), so a rebuild only recompiles what changed. The wheel
# is left in ~/.cache/tars/wheels/ (what an image installs to carry the extension).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TARS_CACHE_DIR:-$HOME/.cache/tars}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/cargo-target-native}
python=${PYTHON:-python3}

if ! command -v cargo >/dev/null; then
  echo "build-native.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
"$python" -m pip install -q 'maturin>=1.7,<2'
cd "$here/node-agent/native"
rm -rf "$cache/wheels/tars_native-"*.whl
"$python" -m maturin build --quiet --release --locked --compatibility linux --out "$cache/wheels"
"$python" -m pip install -q --force-reinstall --no-deps "$cache/wheels/"tars_native-*.whl
cargo build --quiet --release --locked --bin tars-refhost
