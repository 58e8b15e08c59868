#!/usr/bin/env bash
# Debian's PostgreSQL server, which the knowledge-store tests start for real (tests/postgres.py runs
# a throwaway cluster per test session as the postgres user). Only the binaries: the Debian service
# is never started or enabled. About 40 MB; skipped when present.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-postgres: PostgreSQL is missing; run as root (or apt-get install postgresql)" >&2
  exit 1
fi
apt-get update -qq
# policy-rc.d keeps apt from starting the Debian service (the tests run their own servers).
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
if [ "$created" = 1 ]; then rm -f "$policy"; fi
