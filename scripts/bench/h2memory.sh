#!/usr/bin/env bash
# Memory while HTTP/2 clients pull large answers faster than they read them: offload and
# nginx as reverse proxies (h2c with prior knowledge, one worker each) in front of the same
# static nginx, h2load fetching a 1 MiB file over CONNECTIONS connections of STREAMS streams
# each (REQUESTS in all), with h2load's large flow-control windows (1 GiB per stream), so
# that each proxy may hold as much of each answer as it reads ahead. Prints each proxy's
# requests/s and peak resident memory (VmHWM: nginx's master and worker together).
#
#   scripts/bench/h2memory.sh                    # builds offload as deployed
#   OFFLOAD_BIN=target/release/offload CONNECTIONS=8 scripts/bench/h2memory.sh
#
# Why: what a proxy keeps per request in flight is bounded only by its buffers; an answer
# the app sends faster than the client takes it fills them. offload bounds what it reads
# from the app at once (64 KiB, as nginx's proxy_buffers bound it) and what each HTTP/2
# stream holds unsent (64 KiB).
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-32}
STREAMS=${STREAMS:-32}
REQUESTS=${REQUESTS:-4000}
BASE_PORT=${BASE_PORT:-28580}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
OFFLOAD_PORT=$((BASE_PORT + 3))

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"
command -v h2load >/dev/null || "$repo/scripts/apt-install.sh" nghttp2-client

mkdir -p "$work/www"
head -c $((1024 * 1024)) /dev/urandom >"$work/www/1m.bin"
chmod 644 "$work/www/1m.bin"
upstream_conf "$UPSTREAM_PORT" 1
proxy_conf "$NGINX_PORT" "$UPSTREAM_PORT" 1
# h2c with prior knowledge, as offload serves it on a plain listener.
sed -i "s/listen 127.0.0.1:$NGINX_PORT;/listen 127.0.0.1:$NGINX_PORT http2;/" "$work/proxy/nginx.conf"
offload_conf "$OFFLOAD_PORT" "$UPSTREAM_PORT"
start_servers
for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$OFFLOAD_PORT"; do wait_port "$port"; done

printf '%-9s %12s %14s %16s\n' target requests/s "peak RSS KiB" "KiB per stream"
for target in nginx offload; do
    port_var="${target^^}_PORT"
    before=$(rss_kib "${pid_of[$target]}")
    out=$(h2load -n "$REQUESTS" -c "$CONNECTIONS" -m "$STREAMS" "http://127.0.0.1:${!port_var}/1m.bin")
    grep -q " 0 failed" <<<"$out" || echo "warning: $target: $(grep '^requests:' <<<"$out")" >&2
    peak=$(rss_kib "${pid_of[$target]}" VmHWM)
    awk -v t="$target" -v r="$(awk '/^finished in/ {print $4}' <<<"$out")" -v p="$peak" -v b="$before" \
        -v n=$((CONNECTIONS * STREAMS)) \
        'BEGIN { printf "%-9s %12s %14d %16.1f\n", t, r, p, (p - b) / n }'
done
