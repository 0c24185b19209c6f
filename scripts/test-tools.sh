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
"$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" "${missing[@]}"
if ! python3 -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML"
  python3 -m pip install --quiet pyyaml >&2
fi
