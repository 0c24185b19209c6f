#!/usr/bin/env bash
# Tools the deploy-file checks use: `haproxy -c`, `nginx -t`, `systemd-analyze verify` and
# PyYAML (scripts/check-deploy.py). Installs what is missing (Debian's apt, PyPI), never
# starting a service: the checks only read configuration files.
set -euo pipefail

log() { printf '[test-tools %s] %s\n' "$(date +%T)" "$*" >&2; }

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d
  [[ -e $policy ]] && { log "error: $policy exists already; not touching it"; exit 1; }
  # Installed packages must not start their services (nginx would listen on *:80).
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML"
  python3 -m pip install --quiet pyyaml >&2
fi
