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
# invoke-rc.d asks policy-rc.d whether it may start a service; exit 101 says no. A machine may
# have one already (Debian's container images ship one): it is set aside and put back after.
policy=/usr/sbin/policy-rc.d
saved=
if [[ -e $policy ]]; then
    saved=$(mktemp "$policy.offload.XXXXXX")
    cp -p "$policy" "$saved"
fi
restore_policy() {
    if [[ -n $saved ]]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"
apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
