#!/usr/bin/env bash
# The floor under the pass-through benchmark: how close the smallest hyper proxies get to
# nginx on 1 KiB responses, next to offload, in one run (one worker/thread each, the
# upstream nginx of scripts/bench/passthrough.sh, 127.0.0.1 high ports):
#   - nginx            proxy_pass with a keep-alive pool (as in passthrough.sh)
#   - hyper-pooled     examples/hyper_floor.rs: hyper server + hyper-util pooled client
#   - hyper-paired     the same, each client connection paired with its own upstream
#                      connection driven in the same task (no hand-off between tasks)
#   - offload          offload serve, server.worker_threads = 1
#
#   scripts/bench/hyper-floor.sh
#   DURATION=10s scripts/bench/hyper-floor.sh
set -euo pipefail

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
BASE_PORT=${BASE_PORT:-28280}

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"
(cd "$repo" && cargo build --release --quiet --example hyper_floor)
cp "${CARGO_TARGET_DIR:-$repo/target}/release/examples/hyper_floor" "$work/hyper_floor"

declare -A port_of=([direct]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [offload]=$((BASE_PORT + 3))
    [hyper-pooled]=$((BASE_PORT + 4)) [hyper-paired]=$((BASE_PORT + 5)))
names=(direct nginx hyper-pooled hyper-paired offload)

mkdir -p "$work/www" "$work/upstream" "$work/proxy"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
chmod 644 "$work/www/1k.bin"
upstream_conf "${port_of[direct]}" 1
proxy_conf "${port_of[nginx]}" "${port_of[direct]}" 1
offload_conf "${port_of[offload]}" "${port_of[direct]}"

start_servers
for mode in pooled paired; do
    start "hyper-$mode" "$work/hyper_floor" "$mode" "127.0.0.1:${port_of[hyper-$mode]}" "127.0.0.1:${port_of[direct]}"
done
for name in "${names[@]}"; do wait_port "${port_of[$name]}"; done

echo "1k.bin; wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; one worker each, $(nproc) cores"
for name in "${names[@]}"; do
    wrk_run "$name" "http://127.0.0.1:${port_of[$name]}/1k.bin" "${pid_of[$name]}"
done
printf '\n%-13s %12s %10s %10s %12s %14s\n' target "requests/s" "p50 ms" "p99 ms" "CPU us/req" "vs nginx req/s"
for name in "${names[@]}"; do
    ratio=$(awk -v a="${rps[$name]}" -v b="${rps[nginx]}" 'BEGIN { printf "%.2fx", a / b }')
    printf '%-13s %12s %10s %10s %12s %14s\n' "$name" "${rps[$name]}" "${p50[$name]}" "${p99[$name]}" "${cpu_us[$name]}" "$ratio"
done
