#!/usr/bin/env bash
# Builds the TARS image without a container daemon and writes it as an OCI archive outside the
# repository, with an SPDX SBOM and a small JSON record beside it:
#   1. base: a Debian root filesystem (python3.11) made by mmdebstrap from pinned inputs (suite,
#      mirror, package list), imported into buildah's own storage;
#   2. image: `buildah bud` of the repository's Containerfile on that base (overlay storage, chroot
#      isolation: no daemon, works under cgroup v1 as root);
#   3. archive + SBOM (syft, built once from the Go module proxy).
# Every step is cached under $TARS_IMAGES_DIR (default $TARS_CACHE_DIR/images, ~/.cache/tars/images)
# by a digest of its inputs; with nothing changed a run only checks digests.
#
#   hack/images.sh build            # what `make images` runs
#   hack/images.sh push REGISTRY    # skopeo copy of the archive to REGISTRY/tars:<version>
#   hack/images.sh archive          # prints the archive's path
#   hack/images.sh syft             # builds the SBOM tool only (.ci/run, in the background)
#   hack/images.sh buildah ARGS     # buildah on the build's storage (run the image without a daemon)
#
# DEBIAN_MIRROR may name a snapshot (e.g. http://snapshot.debian.org/archive/debian/20261101T000000Z)
# for a byte-for-byte repeatable base; the packages the base got are listed in base-<key>.packages.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/tars-operator/Chart.yaml")
REPOSITORY=${IMAGE_REPOSITORY:-ghcr.io/tars-hyperlight/tars}
REFERENCE="$REPOSITORY:$VERSION"
# Every cache outside the repository is under one root (TARS_CACHE_DIR, as for the native build and
# the guests); TARS_IMAGES_DIR alone moves this script's storage and archive (a cold build's scratch).
CACHE=${TARS_CACHE_DIR:-$HOME/.cache/tars}
OUT=${TARS_IMAGES_DIR:-$CACHE/images}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# libstdc++6: numpy's and tokenizers' wheels link it (manylinux leaves it to the system).
PACKAGES=python3.11,python3.11-venv,ca-certificates,libstdc++6
SYFT_VERSION=v1.57.1
SYFT=$CACHE/bin/syft-$SYFT_VERSION/syft
# overlay: layers are differences (vfs would copy the whole tree for every step: tens of GB).
STORAGE=(--storage-driver overlay --root "$OUT/storage-overlay" --runroot "$OUT/run-overlay")
ARCHIVE="$OUT/tars-$VERSION.oci.tar"
BUILD_STAGE=localhost/tars-build:$VERSION
RECORD="$OUT/tars-$VERSION.json"
SBOM="$OUT/tars-$VERSION.spdx.json"
# buildah keeps the RUN --mount=type=cache directories (pip's downloads, the guest and compiled-code
# cache) and its scratch files under TMPDIR, /var/tmp by default (outside the caches CI keeps, and an
# interrupted push left 1.1 GB there): beside the storage instead, kept and cleaned with it.
export TMPDIR="$OUT/tmp"

log() { printf 'images: [%ss] %s\n' "$SECONDS" "$*" >&2; }

install_tools() {
  local missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v skopeo >/dev/null || missing+=(skopeo)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

# syft is built once per machine from the Go module proxy: 2.1 GB of modules and 8 CPU-minutes
# (21 min on 2 cores busy with other builds). .ci/run starts `hack/images.sh syft` in the background
# when it starts; a build that needs syft meanwhile waits here for that one to finish.
ensure_syft() {
  [ -x "$SYFT" ] && return
  mkdir -p "$(dirname "$SYFT")"
  exec 8>"$SYFT.lock"
  flock 8
  if [ ! -x "$SYFT" ]; then
    log "building syft $SYFT_VERSION (once per machine)"
    GOBIN=$(dirname "$SYFT") GOFLAGS=-trimpath go install "github.com/anchore/syft/cmd/syft@$SYFT_VERSION"
  fi
  exec 8>&-
}

# The base image's tag is a digest of what decides its contents.
base_tag() {
  printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" "variant=essential nodocs" | sha256sum | cut -c1-16
}

make_base() {
  local tag=$1 tar="$OUT/base-$1.tar"
  if buildah "${STORAGE[@]}" inspect --type image "localhost/tars-base:$tag" >/dev/null 2>&1; then
    return
  fi
  log "making the Debian base ($SUITE, $PACKAGES) with mmdebstrap"
  # Documentation, manual pages and translations are not used by a server image.
  mmdebstrap --variant=essential --format=tar --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='dpkg-query --admindir="$1/var/lib/dpkg" -W -f="\${Package}=\${Version}\n" >"'"$OUT/base-$tag.packages"'"' \
    "$SUITE" "$tar.tmp.tar" "$MIRROR"
  mv "$tar.tmp.tar" "$tar"
  local ctr
  ctr=$(buildah "${STORAGE[@]}" from scratch)
  buildah "${STORAGE[@]}" add "$ctr" "$tar" /
  buildah "${STORAGE[@]}" config --cmd '["/usr/bin/python3.11"]' "$ctr"
  buildah "${STORAGE[@]}" commit -q --rm "$ctr" "localhost/tars-base:$tag" >/dev/null
  rm -f "$tar"
}

# A digest of everything the Containerfile reads (tracked and new files, as they are on disk).
sources_digest() {
  (
    cd "$ROOT"
    git ls-files -co --exclude-standard -- Containerfile .dockerignore pyproject.toml README.md \
      api common operator node-agent gateway guests cli | LC_ALL=C sort | while read -r f; do
      [ -f "$f" ] && printf '%s  %s\n' "$(sha256sum <"$f" | cut -c1-64)" "$f"
    done
  ) | sha256sum | cut -c1-64
}

# The native data plane's wheel (hack/build-native.sh, built on this Debian bookworm host like the
# base) goes into the build context where the Containerfile looks for it; the image has no Rust
# toolchain. Without it the image's agents run the wasmtime-py path.
NATIVE_STAGE="$ROOT/node-agent/native/wheels"
stage_native_wheel() {
  rm -rf "$NATIVE_STAGE"
  local wheels=("$CACHE/wheels/"tars_native-*.whl)
  if [ -f "${wheels[0]}" ]; then
    mkdir -p "$NATIVE_STAGE" && cp "${wheels[0]}" "$NATIVE_STAGE/"
  else
    log "no tars_native wheel in ~/.cache/tars/wheels (hack/build-native.sh): the image's agents use the wasmtime-py path"
  fi
}

native_digest() {
  cat "$NATIVE_STAGE"/*.whl "$COMPILED_STAGE"/*.wasm "$GUESTS_STAGE"/*.wasm 2>/dev/null | sha256sum | cut -c1-64
}

# The compiled builtin guests (guests/compiled, Rust; built with cargo by `make install`, cached in
# ~/.cache/tars/guests) go into the build context as compiled-<name>.wasm, where the Containerfile's
# prebuild takes them: the image has no Rust toolchain.
COMPILED_STAGE="$ROOT/guests/compiled/wasm"
stage_compiled_guests() {
  rm -rf "$COMPILED_STAGE"
  "${PYTHON:-python3}" -m tars_guests.compiled --stage "$COMPILED_STAGE" >/dev/null
}

# The builtin guests componentize-py builds (the TARS apps, echo, sleep) go into the build context
# under their cache keys (a digest of their sources and the componentize-py version): the unit lane
# has built them into ~/.cache/tars/guests already, and the Containerfile puts them into its build
# cache, so the image build runs componentize-py only for a guest whose key differs there (none when
# the image's componentize-py is this machine's; every one from a plain clone).
GUESTS_STAGE="$ROOT/guests/staged"
stage_componentized_guests() {
  rm -rf "$GUESTS_STAGE"
  "${PYTHON:-python3}" -m tars_agent.prebuild --stage-guests "$GUESTS_STAGE" >/dev/null
}

# Every build leaves the previous build's layers untagged (2 GB or more each), and an interrupted
# build leaves its working containers: without this the storage grows by gigabytes per build until
# the disk is full. Kept: the base, the image and the build stage, with the layers under them.
# Called under the build lock; containers are only made by builds and by tests after a build.
prune() {
  buildah "${STORAGE[@]}" rm --all >/dev/null
  buildah "${STORAGE[@]}" rmi --prune >/dev/null
  rm -rf "$TMPDIR"/buildah[0-9]*
}

build() {
  mkdir -p "$OUT" "$TMPDIR"
  # One build at a time per machine: a second `make images` waits, then finds the archive up to date.
  exec 9>"$OUT/.build.lock"
  flock 9
  install_tools
  local started=$SECONDS tag revision key
  tag=$(base_tag)
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  stage_native_wheel
  stage_compiled_guests
  stage_componentized_guests
  key=$(printf '%s\n' "$tag" "$REFERENCE" "$revision" "$(sources_digest)" "$(native_digest)" | sha256sum | cut -c1-64)
  if [ -f "$RECORD" ] && [ -f "$ARCHIVE" ] && [ -f "$SBOM" ] && grep -q "\"key\": \"$key\"" "$RECORD"; then
    log "$REFERENCE is up to date: $ARCHIVE"
    return
  fi
  prune
  make_base "$tag"
  log "building $REFERENCE (buildah, overlay storage; cached layers are reused)"
  # The host's CA bundle, for RUN steps only (a TLS-inspecting proxy's CA reaches pip; the image
  # keeps its own bundle).
  local ca=()
  [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  local bud=(buildah "${STORAGE[@]}" bud --isolation chroot --layers "${ca[@]}"
    --build-arg "BASE_IMAGE=localhost/tars-base:$tag"
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" -f "$ROOT/Containerfile")
  # The build stage is tagged too, so that pruning keeps its layers (the dependencies' pip install)
  # as the next build's cache; the second run takes every build-stage step from that cache.
  "${bud[@]}" --target build -t "$BUILD_STAGE" "$ROOT"
  "${bud[@]}" -t "$REFERENCE" "$ROOT"
  log "writing the OCI archive"
  rm -f "$ARCHIVE.tmp"
  buildah "${STORAGE[@]}" push -q "$REFERENCE" "oci-archive:$ARCHIVE.tmp:$REFERENCE"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  ensure_syft
  log "SBOM (syft $SYFT_VERSION, SPDX)"
  "$SYFT" scan -q "oci-archive:$ARCHIVE" -o "spdx-json=$SBOM.tmp"
  mv "$SBOM.tmp" "$SBOM"
  prune
  local image_bytes
  image_bytes=$(python3 - "$ARCHIVE" <<'PY'
import gzip, json, sys, tarfile
# The unpacked size: every layer decompressed (what a node's disk holds).
with tarfile.open(sys.argv[1]) as archive:
    def blob(digest):
        return archive.extractfile("blobs/" + digest.replace(":", "/"))
    manifest = json.load(blob(json.load(archive.extractfile("index.json"))["manifests"][0]["digest"]))
    total = 0
    for layer in manifest["layers"]:
        stream = gzip.GzipFile(fileobj=blob(layer["digest"])) if "gzip" in layer["mediaType"] else blob(layer["digest"])
        while chunk := stream.read(1 << 20):
            total += len(chunk)
print(total)
PY
)
  cat >"$RECORD" <<EOF
{"reference": "$REFERENCE", "archive": "$ARCHIVE", "sbom": "$SBOM", "archiveBytes": $(stat -c %s "$ARCHIVE"), "imageBytes": $image_bytes, "baseTag": "$tag", "revision": "$revision", "buildSeconds": $((SECONDS - started)), "key": "$key"}
EOF
  log "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) in $((SECONDS - started)) s"
}

push() {
  local registry=${1:?usage: hack/images.sh push REGISTRY (e.g. registry.example.com/team)}
  [ -f "$ARCHIVE" ] || { echo "no $ARCHIVE: run make images first" >&2; exit 1; }
  command -v skopeo >/dev/null || install_tools
  log "pushing $ARCHIVE to docker://$registry/tars:$VERSION"
  skopeo copy "oci-archive:$ARCHIVE" "docker://$registry/tars:$VERSION"
}

case "${1:-build}" in
  build) build ;;
  push) push "${2:-}" ;;
  archive) echo "$ARCHIVE" ;;
  syft) mkdir -p "$TMPDIR"; ensure_syft ;;
  buildah) shift; mkdir -p "$TMPDIR"; exec buildah "${STORAGE[@]}" "$@" ;;  # e.g. run a command in the image (tests, bench)
  *) echo "usage: $0 [build|push REGISTRY|archive|syft|buildah ARGS...]" >&2; exit 2 ;;
esac
