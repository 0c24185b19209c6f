#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with Rust: installs and starts what the
# tests need (a real WordPress with MariaDB, a second S3 implementation), runs every test,
# and stops what it started.
#
# Unit and end-to-end tests run with cargo-nextest when installed (cargo test otherwise). The
# in-process S3 server (s3s-fs) needs nothing installed. OFFLOAD_TEST_SKIP_WORDPRESS=1 or
# OFFLOAD_TEST_SKIP_MOTO=1 leave those parts out (the tests needing them then say so).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test %s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
  local rc=$?
  if [[ -n "${started_wordpress:-}" ]]; then scripts/e2e/wordpress-down.sh >&2 || true; fi
  if [[ -n "${started_moto:-}" ]]; then scripts/test-servers/moto.sh stop >&2 || true; fi
  exit "$rc"
}
trap cleanup EXIT

export OFFLOAD_E2E_DIR="${OFFLOAD_E2E_DIR:-$(mktemp -d /tmp/offload-e2e.XXXXXX)}"
# MariaDB runs as its own user and must reach its data folder inside.
chmod 755 "$OFFLOAD_E2E_DIR"

# A real WordPress (Debian's 6.1) on 127.0.0.1: two web servers sharing one database, each
# with its own uploads folder, for the WordPress and scale-out tests.
if [[ -z "${OFFLOAD_TEST_SKIP_WORDPRESS:-}" ]]; then
  log "starting WordPress (installs Debian packages on first run)"
  started_wordpress=1
  WP_SERVERS=2 scripts/e2e/wordpress-up.sh >&2
  export OFFLOAD_TEST_WORDPRESS="$OFFLOAD_E2E_DIR/wordpress/wordpress.env"
  # WordPress was started: its tests (and the joomla-like ones, which need its php) must run.
  export OFFLOAD_REQUIRE_WORDPRESS=1
fi

# moto's S3 server in authenticated mode: the store tests run against it too, so the code
# depends on no single server's quirks.
if [[ -z "${OFFLOAD_TEST_SKIP_MOTO:-}" ]]; then
  log "starting moto (second S3 implementation)"
  started_moto=1
  eval "$(scripts/test-servers/moto.sh start)"
fi

# haproxy, nginx, systemd-analyze and PyYAML for the deploy-file checks.
scripts/test-tools.sh

log "running the tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
