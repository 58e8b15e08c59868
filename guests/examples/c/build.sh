#!/usr/bin/env bash
# Builds C guest functions into WebAssembly components of the tars:guest `function` world.
#
#   guests/examples/c/build.sh [OUT_DIR [SOURCE.c ...]]
#
# OUT_DIR defaults to guests/examples/build (ignored by git); SOURCE defaults to greeter.c beside this
# script. Each SOURCE.c becomes OUT_DIR/SOURCE.wasm, in three steps:
#   1. `wit-bindgen c` writes the world's bindings (function.h, function.c, and an object carrying the
#      component type) from guests/wit;
#   2. clang compiles them with the source for wasm32-wasi as a reactor (a library, no main), linking
#      wasi-libc;
#   3. `jco new --wasi-reactor` turns that core module into a component, adapting its WASI preview-1
#      imports to the preview-2 interfaces the agent links.
# The tools come from the registries, installed once by hack/guest-toolchains.sh (clang, lld and
# wasi-libc from Debian; wit-bindgen-cli from crates.io; jco from npm, with the JavaScript toolchain).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:-$here/../build}
if [ $# -gt 0 ]; then shift; fi
sources=("$@")
if [ ${#sources[@]} -eq 0 ]; then sources=("$here/greeter.c"); fi

eval "$(bash "$repo/hack/guest-toolchains.sh" c --print-env)"

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$WIT_BINDGEN" c --world function --out-dir "$work/bindings" "$repo/guests/wit" >/dev/null
for source in "${sources[@]}"; do
  name=$(basename "$source" .c)
  "$CLANG" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -mexec-model=reactor -O2 -Wall -Werror \
    -Wno-unused-function -I "$work/bindings" -I "$here" \
    -o "$work/$name.core.wasm" "$source" "$work/bindings/function.c" "$work/bindings/function_component_type.o"
  node "$JCO" new "$work/$name.core.wasm" --wasi-reactor -o "$work/$name.wasm" >/dev/null
  mv "$work/$name.wasm" "$out/$name.wasm"
  echo "$out/$name.wasm"
done
