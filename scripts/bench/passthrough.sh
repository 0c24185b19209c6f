#!/usr/bin/env bash
# Pass-through benchmark: offload vs nginx as reverse proxies in front of the same static
# upstream (nginx), 1 KiB and 200 KiB files, all on 127.0.0.1 high ports.
#
#   scripts/bench/passthrough.sh            # builds offload as deployed (scripts/build-release.sh)
#   DURATION=30s CONNECTIONS=128 scripts/bench/passthrough.sh
#   ROUNDS=1 scripts/bench/passthrough.sh   # one pass instead of the median of six
#   SIZES=1k.bin scripts/bench/passthrough.sh
#   ACCESS_LOG=1 scripts/bench/passthrough.sh   # both proxies log each request
#   COMPARE_BIN=path/to/offload scripts/bench/passthrough.sh
#   OFFLOAD_LOG_LEVEL=info COMPARE_BIN=same COMPARE_ENV=OFFLOAD_LOG_BUFFER=0 scripts/bench/passthrough.sh
#
# COMPARE_BIN adds another offload binary (the same config, its own port) as target
# `offload-b`, measured in every round next to `offload`, and prints the per-round ratios
# of offload to it: an A/B of two builds on the same machine at the same time. `same` is
# the binary under test; COMPARE_ENV (NAME=value ...) is set for offload-b only, so that
# one build can be compared under two settings (OFFLOAD_* overrides the config file).
#
# Within a round the targets run one after the other, in reverse order every other round,
# so that each place in a round (what ran just before, how warm the machine is) falls on
# each target alike over an even number of rounds: with a fixed order, a target's place
# could not be told from its speed.
#
# Fairness: both proxies keep a keep-alive pool to the upstream, neither writes an access
# log (nginx: access_log off; offload: log.level = "warn") unless ACCESS_LOG=1 (then both
# write a line per request to a file, buffered alike: nginx `access_log combined
# buffer=64k flush=1s`, offload `log.level = "info"` with its default 64 KiB log.buffer,
# written out when a worker idles, where nginx's flush is a timer), both get the same
# number of workers: PROXY_WORKERS (default 1: nginx worker_processes 1, offload
# server.worker_threads = 1; PROXY_WORKERS=auto gives nginx one worker per core and offload
# its default, one thread per core). nginx gets 256 KiB of proxy buffers so that a 200 KiB
# answer stays in memory (its 64 KiB default spills to a temp file). The upstream nginx runs
# worker_processes $UPSTREAM_WORKERS (default 1). wrk, the upstream and the proxy share the
# machine, so the "direct" row is the ceiling. "CPU us/req" is the proxy's own CPU time per
# request, "machine us/req" that of every process on the machine: once all cores are busy,
# requests/s follow the latter, and a proxy's share of it decides its ratio to nginx.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-6}
read -ra sizes <<<"${SIZES:-1k.bin 200k.bin}"
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_WORKERS=${PROXY_WORKERS:-1}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BASE_PORT=${BASE_PORT:-28080}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
OFFLOAD_PORT=$((BASE_PORT + 3))
COMPARE_PORT=$((BASE_PORT + 4))

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"

mkdir -p "$work/www" "$work/upstream" "$work/proxy"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c $((200 * 1024)) /dev/urandom >"$work/www/200k.bin"
chmod 644 "$work/www/"*

offload_log_level=warn
if [[ ${ACCESS_LOG:-0} == 1 ]]; then
    PROXY_ACCESS_LOG="$work/proxy/access.log combined buffer=64k flush=1s"
    offload_log_level=info
fi
upstream_conf "$UPSTREAM_PORT" "$UPSTREAM_WORKERS"
proxy_conf "$NGINX_PORT" "$UPSTREAM_PORT" "$PROXY_WORKERS"
offload_threads=$PROXY_WORKERS
[[ $offload_threads == auto ]] && offload_threads=0
offload_conf "$OFFLOAD_PORT" "$UPSTREAM_PORT" "$offload_threads" "$offload_log_level"

declare -A port_of=([direct]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [offload]=$OFFLOAD_PORT)
targets=(direct nginx offload)
start_servers
if [[ -n ${COMPARE_BIN:-} ]]; then
    compare_bin=$COMPARE_BIN
    [[ $compare_bin == same ]] && compare_bin=$offload_bin
    cp "$compare_bin" "$work/offload-b"
    sed "s/127.0.0.1:$OFFLOAD_PORT/127.0.0.1:$COMPARE_PORT/" "$work/offload.toml" >"$work/offload-b.toml"
    # A build from before server.keepalive_requests (2026-12-07) has no limit to raise.
    if ! "$work/offload-b" check-config --config "$work/offload-b.toml" >/dev/null 2>&1; then
        sed -i '/^keepalive_requests = /d' "$work/offload-b.toml"
    fi
    read -ra compare_env <<<"${COMPARE_ENV:-}"
    start offload-b env "${compare_env[@]}" "$work/offload-b" serve --config "$work/offload-b.toml" >"$work/offload-b.log" 2>&1
    port_of[offload-b]=$COMPARE_PORT
    targets+=(offload-b)
fi

for name in "${targets[@]}"; do wait_port "${port_of[$name]}"; done
for name in "${targets[@]}"; do
    port=${port_of[$name]}
    curl -fsS -o /dev/null "http://127.0.0.1:$port/1k.bin" || { echo "port $port does not serve"; exit 1; }
done

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS rounds; nginx proxy workers: $PROXY_WORKERS, upstream workers: $UPSTREAM_WORKERS, $(nproc) cores"
# Rounds repeat the targets, so that a slow spell of the shared machine falls on each of
# them alike; the table shows each figure's median over the rounds, and the last line of
# each size the median (lowest-highest) of the per-round ratios.
for round in $(seq "$ROUNDS"); do
    order=("${targets[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
    fi
    for file in "${sizes[@]}"; do
        for name in "${order[@]}"; do
            wrk_run "$name/$file/$round" "http://127.0.0.1:${port_of[$name]}/$file" "${pid_of[$name]}"
        done
        ratios "round $round: $file" "offload/$file/$round" "nginx/$file/$round"
    done
done
for file in "${sizes[@]}"; do
    for name in "${targets[@]}"; do
        medians "$name/$file" "$ROUNDS"
    done
done

printf '\n%-9s %-9s %12s %10s %10s %12s %16s\n' size target "requests/s" "p50 ms" "p99 ms" "CPU us/req" "machine us/req"
for file in "${sizes[@]}"; do
    for name in "${targets[@]}"; do
        k=$name/$file
        printf '%-9s %-9s %12s %10s %10s %12s %16s\n' "$file" "$name" "${rps[$k]}" "${p50[$k]}" "${p99[$k]}" "${cpu_us[$k]}" "${machine_us[$k]}"
    done
    ratios "$file" "offload/$file" "nginx/$file"
    paired_ratios "$file" "offload/$file" "nginx/$file" "$ROUNDS"
    if [[ -n ${COMPARE_BIN:-} ]]; then
        paired_ratios "$file" "offload/$file" "offload-b/$file" "$ROUNDS" offload/offload-b
    fi
done
