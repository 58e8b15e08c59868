#!/usr/bin/env bash
# Debian packages the real local node needs (tarsctl cluster add-node --real): runc, which containerd
# runs containers with; socat, which relays the kubernetes Service address to the loopback-only API
# server; iproute2 for the address and the bridge. CI starts from a fresh machine, so `make` runs this.
set -euo pipefail
missing=()
command -v runc >/dev/null || missing+=(runc)
command -v socat >/dev/null || missing+=(socat)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
