#!/usr/bin/env bash
# Debian's chromium: the report test opens report.html in it headless (screenshot and DOM). CI starts
# from a fresh machine, so `make test-unit` and `make test-cluster` run this; a no-op once installed.
set -euo pipefail
if ! command -v chromium >/dev/null; then
  apt-get update -qq -o DPkg::Lock::Timeout=900
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends chromium fonts-dejavu-core
fi
