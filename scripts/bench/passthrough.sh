#!/usr/bin/env bash
# Pass-through benchmark: offload vs nginx as reverse proxies in front of the same static
# upstream (nginx), 1 KiB and 200 KiB files, all on 127.0.0.1 high ports.
#
#   scripts/bench/passthrough.sh            # builds offload --release if needed
#   DURATION=30s CONNECTIONS=128 scripts/bench/passthrough.sh
#
# Fairness: both proxies keep a keep-alive pool to the upstream, neither writes an access
# log (nginx: access_log off; offload: log.level = "warn"), both get the same number of
# workers: PROXY_WORKERS (default 1: nginx worker_processes 1, offload
# server.worker_threads = 1; PROXY_WORKERS=auto gives nginx one worker per core and offload
# its default, one thread per core). nginx gets 256 KiB of proxy buffers so that a 200 KiB
# answer stays in memory (its 64 KiB default spills to a temp file). The upstream nginx runs
# worker_processes $UPSTREAM_WORKERS (default 1). wrk, the upstream and the proxy share the
# machine, so the "direct" row is the ceiling.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_WORKERS=${PROXY_WORKERS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BASE_PORT=${BASE_PORT:-28080}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
OFFLOAD_PORT=$((BASE_PORT + 3))

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"

mkdir -p "$work/www" "$work/upstream" "$work/proxy"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c $((200 * 1024)) /dev/urandom >"$work/www/200k.bin"
chmod 644 "$work/www/"*

common="daemon off; pid PREFIX/nginx.pid; error_log PREFIX/error.log warn; user root;"
cat >"$work/upstream/nginx.conf" <<CONF
${common//PREFIX/$work/upstream}
worker_processes $UPSTREAM_WORKERS;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    server { listen 127.0.0.1:$UPSTREAM_PORT; root $work/www; }
}
CONF
cat >"$work/proxy/nginx.conf" <<CONF
${common//PREFIX/$work/proxy}
worker_processes $PROXY_WORKERS;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_buffers 32 8k;
            proxy_busy_buffers_size 64k;
        }
    }
}
CONF
offload_threads=$PROXY_WORKERS
[[ $offload_threads == auto ]] && offload_threads=0
cat >"$work/offload.toml" <<CONF
[server]
listen = "127.0.0.1:$OFFLOAD_PORT"
admin_listen = "off"
worker_threads = $offload_threads
[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"
[log]
level = "warn"
CONF

"$nginx_bin" -p "$work/upstream" -c "$work/upstream/nginx.conf" &
pids+=($!)
"$nginx_bin" -p "$work/proxy" -c "$work/proxy/nginx.conf" &
pids+=($!)
"$offload_bin" serve --config "$work/offload.toml" >"$work/offload.log" 2>&1 &
pids+=($!)

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    exit 1
}
for port in $UPSTREAM_PORT $NGINX_PORT $OFFLOAD_PORT; do wait_port "$port"; done
for port in $UPSTREAM_PORT $NGINX_PORT $OFFLOAD_PORT; do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/1k.bin" || { echo "port $port does not serve"; exit 1; }
done

# wrk prints latencies as 812.00us / 1.52ms / 1.01s: normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

declare -A rps p50 p99
run() { # name port file
    local out
    # A short warm-up fills the pools and the caches.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$2/$3" >/dev/null
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2/$3")
    rps[$1/$3]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50[$1/$3]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99[$1/$3]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "warning: $1 $3: $(grep "Non-2xx\|Socket errors" <<<"$out")" >&2
    fi
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; nginx proxy workers: $PROXY_WORKERS, upstream workers: $UPSTREAM_WORKERS, $(nproc) cores"
for file in 1k.bin 200k.bin; do
    run direct "$UPSTREAM_PORT" "$file"
    run nginx "$NGINX_PORT" "$file"
    run offload "$OFFLOAD_PORT" "$file"
done

printf '\n%-9s %-8s %12s %10s %10s\n' size target "requests/s" "p50 ms" "p99 ms"
for file in 1k.bin 200k.bin; do
    for name in direct nginx offload; do
        printf '%-9s %-8s %12s %10s %10s\n' "$file" "$name" "${rps[$name/$file]}" "${p50[$name/$file]}" "${p99[$name/$file]}"
    done
    awk -v o="${rps[offload/$file]}" -v n="${rps[nginx/$file]}" -v op="${p99[offload/$file]}" -v np="${p99[nginx/$file]}" -v f="$file" \
        'BEGIN { printf "%-9s offload/nginx: requests/s %.2fx, p99 %.2fx\n", f, o / n, op / np }'
done
