#!/usr/bin/env bash
# Tools the deploy-file checks use: `haproxy -c`, `nginx -t`, `systemd-analyze verify`,
# PyYAML (scripts/check-deploy.py) and Prometheus's `promtool` (the alerting rules). Installs
# what is missing (Debian's apt, PyPI), never starting a service: the checks only read
# configuration files.
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

# promtool comes with Debian's prometheus package, whose installation would start a
# Prometheus server on *:9090 (offload's admin port). Only the tool is taken from the package.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (from Debian's prometheus package, not installed)"
  unpacked=$(mktemp -d)
  chmod 755 "$unpacked" # apt downloads as its own user
  (cd "$unpacked" && apt-get download -q -o APT::Sandbox::User=root prometheus >&2) ||
    { apt-get update -q >&2 && (cd "$unpacked" && apt-get download -q -o APT::Sandbox::User=root prometheus >&2); }
  dpkg-deb -x "$unpacked"/prometheus_*.deb "$unpacked/root"
  install -m 755 "$unpacked/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$unpacked"
fi
