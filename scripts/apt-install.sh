#!/usr/bin/env bash
# Installs Debian packages without starting their services: Debian starts a freshly installed
# nginx on *:80, and nothing here may listen beyond 127.0.0.1. Used by the test and benchmark
# scripts for what they need (nginx-light, wrk, haproxy, ...).
#
#   scripts/apt-install.sh PACKAGE...
set -euo pipefail

log() { printf '[apt-install %s] %s\n' "$(date +%T)" "$*" >&2; }

(($#)) || exit 0
log "installing $*"
policy=/usr/sbin/policy-rc.d
[[ -e $policy ]] && { log "error: $policy exists already; not touching it"; exit 1; }
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
