#!/usr/bin/env bash
# Stop what scripts/e2e/wordpress-up.sh started (PHP web servers, MariaDB), by the PIDs it
# recorded, and nothing else. Data (database, uploads) is kept; WP_PURGE=1 deletes the
# state dir too (the next wordpress-up.sh then reinstalls the site).
set -euo pipefail

E2E_DIR="${OFFLOAD_E2E_DIR:-/tmp/offload-e2e}"
STATE="$E2E_DIR/wordpress"

log() { printf '[wordpress-down] %s\n' "$*" >&2; }
read_pid() { if [[ -s "$1" ]]; then tr -dc '0-9' <"$1"; fi; }

# stop PID [name]: the process was started with setsid, so it leads its own process
# group (the PHP server's workers are in it); signal that group, then the PID itself.
stop() {
  local pid=$1 name=$2 cmd
  [[ -n "$pid" ]] || return 0
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) is not running"
    return 0
  fi
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  case "$cmd" in
    *php*-S\ 127.0.0.1:*|*mariadbd*|*mysqld*) ;;
    *) log "pid $pid is not ours ($cmd); leaving it alone"; return 0 ;;
  esac
  log "stopping $name (pid $pid)"
  if [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name (pid $pid) still running after 15 s: SIGKILL"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

if [[ ! -d "$STATE" ]]; then
  log "nothing to stop ($STATE does not exist)"
  exit 0
fi
for pidfile in "$STATE"/web*/php.pid; do
  [[ -e "$pidfile" ]] || continue
  stop "$(read_pid "$pidfile")" "web server $(basename "$(dirname "$pidfile")")"
  rm -f "$pidfile"
done
db_pid="$(read_pid "$STATE/mysql/mysqld.pid")"
launcher_pid="$(read_pid "$STATE/mysql/mariadbd.launcher.pid")"
stop "$db_pid" MariaDB
# the PID recorded at launch is mariadbd's own unless it died before writing its pid file
if [[ -n "$launcher_pid" && "$launcher_pid" != "$db_pid" ]]; then
  stop "$launcher_pid" "MariaDB (launch pid)"
fi
rm -f "$STATE/mysql/mariadbd.launcher.pid"
if [[ "${WP_PURGE:-0}" == 1 ]]; then
  log "removing $STATE"
  rm -rf "$STATE"
  rm -f /etc/wordpress/config-offload-e2e.php
fi
