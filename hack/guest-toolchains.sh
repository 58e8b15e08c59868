#!/usr/bin/env bash
# Installs the toolchains for users' functions in JavaScript and C, once per machine, from the
# registries only, into caches outside the repository:
#
#   js  componentize-js (npm ci from guests/tars_guests/js/package-lock.json) -> ~/.cache/tars/node/
#   c   clang, lld, wasi-libc and compiler-rt for wasm32 (Debian), wit-bindgen-cli (crates.io, built by
#       cargo) -> ~/.cache/tars/tools/, and jco (npm, part of the js toolchain) for `jco new`
#
#   hack/guest-toolchains.sh [js|c|all] [--print-env]
#
# --print-env prints, for `eval`, where the tools are (CLANG, WASI_SYSROOT, WIT_BINDGEN, JCO, and
# JS_TOOLCHAIN); everything else goes to stderr. Python and Rust need nothing here (componentize-py is
# a Python dependency; Rust's target comes from rustup in guests/examples/build.sh).
set -euo pipefail

WIT_BINDGEN_VERSION=0.46.0
CLANG_VERSION=14
DEBIAN_PACKAGES=(clang-$CLANG_VERSION lld-$CLANG_VERSION wasi-libc libclang-rt-$CLANG_VERSION-dev-wasm32)

what=${1:-all}
print_env=false
if [ "${2:-}" = --print-env ] || [ "${1:-}" = --print-env ]; then print_env=true; fi
if [ "$what" = --print-env ]; then what=all; fi
cache=${TARS_CACHE_DIR:-$HOME/.cache/tars}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}

js_toolchain() {
  PYTHONPATH="$repo/guests${PYTHONPATH:+:$PYTHONPATH}" "$python" -m tars_guests.jsbuild --install
}

c_toolchain() {
  local missing=()
  for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "guest-toolchains.sh: C functions need the Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
      exit 1
    fi
    echo "guest-toolchains.sh: apt-get install ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  local root=$cache/tools/wit-bindgen-$WIT_BINDGEN_VERSION
  if [ ! -x "$root/bin/wit-bindgen" ]; then
    echo "guest-toolchains.sh: cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION (a few minutes, once)" >&2
    cargo install --quiet --locked "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --root "$root.tmp" >&2
    rm -rf "$root" && mv "$root.tmp" "$root"
  fi
}

case "$what" in
  js) js_dir=$(js_toolchain) ;;
  c) c_toolchain; js_dir=$(js_toolchain) ;;
  all) c_toolchain; js_dir=$(js_toolchain) ;;
  *) echo "usage: $0 [js|c|all] [--print-env]" >&2; exit 2 ;;
esac

if $print_env; then
  echo "JS_TOOLCHAIN='$js_dir'"
  echo "JCO='$js_dir/node_modules/@bytecodealliance/jco/dist/jco.js'"
  if [ "$what" != js ]; then
    echo "CLANG='$(command -v clang-$CLANG_VERSION)'"
    echo "WASI_SYSROOT=/usr"
    echo "WIT_BINDGEN='$cache/tools/wit-bindgen-$WIT_BINDGEN_VERSION/bin/wit-bindgen'"
  fi
fi
