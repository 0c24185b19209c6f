#!/usr/bin/env bash
# Memory per idle keep-alive connection: offload and nginx as reverse proxies in front of the
# same static nginx (one worker each, 127.0.0.1 high ports). A client opens CONNECTIONS
# connections to each proxy in turn, sends one GET of 1 KiB on each, reads the answer and
# keeps the connection open; the proxy's resident memory (RSS, nginx's master and worker
# together) is read before, while they are all open and idle, and 12 s after the client
# closed them (offload gives freed memory back within 10 s: src/memory.rs).
#
#   scripts/bench/connections.sh                 # builds offload as deployed
#   CONNECTIONS=2000 OFFLOAD_BIN=target/release/offload scripts/bench/connections.sh
#   REQUESTS=0 scripts/bench/connections.sh      # connections that never send a request
#
# REQUESTS=0 opens the connections and sends nothing, as a browser's preconnects (opened
# ahead in case a request comes) sit until they are used or dropped; both proxies close
# them after their header timeout (nginx's client_header_timeout, offload's
# server.header_read_timeout: 60 s and 10 s), well after the reading.
#
# Why: a proxy that faces clients directly (no load balancer pooling them) holds one
# connection per open browser tab for its keep-alive time; what each costs while idle
# decides how many fit in memory. Kernel socket buffers are not in RSS, and are the same
# for both.
set -euo pipefail

CONNECTIONS=${CONNECTIONS:-8000}
REQUESTS=${REQUESTS:-1}
BASE_PORT=${BASE_PORT:-28480}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
OFFLOAD_PORT=$((BASE_PORT + 3))

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"

# The client holds every connection open at once; offload raises its own limit.
ulimit -n "$(ulimit -Hn)"
if ((CONNECTIONS + 100 > $(ulimit -n))); then
    echo "CONNECTIONS=$CONNECTIONS needs more open files than $(ulimit -n)" >&2
    exit 1
fi

mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
chmod 644 "$work/www/1k.bin"
upstream_conf "$UPSTREAM_PORT" 1
PROXY_WORKER_CONNECTIONS=$((CONNECTIONS + 1000)) proxy_conf "$NGINX_PORT" "$UPSTREAM_PORT" 1
offload_conf "$OFFLOAD_PORT" "$UPSTREAM_PORT" 1 warn "max_connections = $((CONNECTIONS + 1000))"
start_servers
for port in "$UPSTREAM_PORT" "$NGINX_PORT" "$OFFLOAD_PORT"; do wait_port "$port"; done

# Opens `count` connections to `port`, a 1 KiB GET answered on each, then writes "open" to
# stdout and holds them until its stdin closes (so the script is given with -c, not on
# stdin).
read -r -d '' holder_py <<'PY' || true
import asyncio, sys

port, count, ask = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] != "0"
REQUEST = b"GET /1k.bin HTTP/1.1\r\nHost: bench\r\n\r\n"

async def one(opening):
    async with opening:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if not ask:
            return writer
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        return writer

async def main():
    opening = asyncio.Semaphore(200)  # under the listen backlogs
    writers = await asyncio.gather(*(one(opening) for _ in range(count)))
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()

asyncio.run(main())
PY

printf '%-9s %12s %12s %12s %14s\n' target "before KiB" "open KiB" "after KiB" "KiB/connection"
for target in nginx offload; do
    port_var="${target^^}_PORT"
    pid=${pid_of[$target]}
    # A few requests first, so that what every connection shares (the upstream pool, lazily
    # built state) is in place before the baseline.
    curl -s -o /dev/null "http://127.0.0.1:${!port_var}/1k.bin"
    before=$(rss_kib "$pid")
    coproc holder { python3 -c "$holder_py" "${!port_var}" "$CONNECTIONS" "$REQUESTS"; }
    read -r ready <&"${holder[0]}"
    [[ $ready == open ]] || { echo "client failed on $target" >&2; exit 1; }
    sleep 1
    open=$(rss_kib "$pid")
    eval "exec ${holder[1]}>&-"
    wait "$holder_PID" 2>/dev/null || true
    sleep 12
    after=$(rss_kib "$pid")
    awk -v t="$target" -v b="$before" -v o="$open" -v a="$after" -v n="$CONNECTIONS" \
        'BEGIN { printf "%-9s %12d %12d %12d %14.2f\n", t, b, o, a, (o - b) / n }'
done
