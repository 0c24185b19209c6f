#!/usr/bin/env bash
# User-space instructions per 1 KiB pass-through request, counted by valgrind's callgrind:
# nginx as proxy, the two bare hyper proxies of examples/hyper_floor.rs and offload, each
# in front of the same static nginx upstream (one worker/thread each, 127.0.0.1 high ports).
#
#   scripts/bench/instructions.sh
#   REQUESTS_FOR=20s scripts/bench/instructions.sh
#   CACHE_SIM=1 scripts/bench/instructions.sh   # and simulated cache misses per request
#   CACHE_SIM=1 CONNECTIONS=256 scripts/bench/instructions.sh
#   ACCESS_LOG=1 scripts/bench/instructions.sh  # nginx and offload log each request
#   ACCESS_LOG=1 LOG_FORMAT=json scripts/bench/instructions.sh
#   LOCKED=1 CONNECTIONS=64 scripts/bench/instructions.sh  # and locked instructions, clock reads
#
# Why next to the wrk benchmarks: on a shared, noisy machine requests/s move by several
# percent between runs, and a change worth 2% cannot be told from noise. Instructions
# executed are a count, not a timing: the same binary gives the same count within ~0.5%
# from run to run, so a change's effect on the proxy's own work shows at once. They are not
# the whole cost: the kernel's share (sockets, wake-ups) and cache misses are left out, so
# wrk (scripts/bench/passthrough.sh) has the last word on speed.
#
# CACHE_SIM=1 has callgrind simulate the caches too and adds misses per request: L1
# instruction, data-read and data-write (the host's L1 sizes), and data-read and data-write
# misses in the host's per-core L2, which callgrind simulates as its last level (read from
# /sys; its own default would be the shared L3). Two proxies with about the same
# instructions can differ in those, and a miss costs several instructions' time (an L2
# miss, dozens). L2 misses grow with CONNECTIONS: each connection's state that a request
# touches has to be fetched again once the other connections' have pushed it out.
#
# Each proxy runs under callgrind (~50x slower), so wrk uses CONNECTIONS (default 16)
# connections for REQUESTS_FOR (default 10s) after a warm-up; counters are zeroed after the
# warm-up and dumped before the proxy stops.
#
# LOCKED=1 adds what the count weighs as one instruction each though each costs more:
# locked (atomic) read-modify-write instructions and clock reads per request
# (scripts/bench/locked.py, from callgrind's per-instruction counts and objdump).
#
# ACCESS_LOG=1 has nginx write its combined log line (buffered, as passthrough.sh) and
# offload its access line (log.level = "info", in LOG_FORMAT: text by default) to files.
set -euo pipefail

REQUESTS_FOR=${REQUESTS_FOR:-10s}
CONNECTIONS=${CONNECTIONS:-16}
BASE_PORT=${BASE_PORT:-28380}

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"
command -v valgrind >/dev/null || "$repo/scripts/apt-install.sh" valgrind
(cd "$repo" && cargo build --release --quiet --example hyper_floor)
cp "${CARGO_TARGET_DIR:-$repo/target}/release/examples/hyper_floor" "$work/hyper_floor"

upstream_port=$((BASE_PORT + 1))
proxy_port=$((BASE_PORT + 2))
mkdir -p "$work/www" "$work/upstream" "$work/proxy"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
chmod 644 "$work/www/1k.bin"
offload_log_level=warn
if [[ ${ACCESS_LOG:-0} == 1 ]]; then
    PROXY_ACCESS_LOG="$work/proxy/access.log combined buffer=64k flush=1s"
    offload_log_level=info
fi
upstream_conf "$upstream_port" 1
proxy_conf "$proxy_port" "$upstream_port" 1
# One process: callgrind follows the process it starts, not nginx's forked worker.
sed -i 's/^daemon off;/daemon off; master_process off;/' "$work/proxy/nginx.conf"
offload_conf "$proxy_port" "$upstream_port" 1 "$offload_log_level" "" \
    "format = \"${LOG_FORMAT:-text}\""

start direct "$nginx_bin" -p "$work/upstream" -c "$work/upstream/nginx.conf"
wait_port "$upstream_port"

# callgrind's cache options: with CACHE_SIM, its last level is the host's L2 of one core
# (sizes from /sys), where callgrind would take the last level the CPU reports (L3).
cache_args=()
last_level=LL
if [[ -n ${CACHE_SIM:-} ]]; then
    cache_args=(--cache-sim=yes)
    for dir in /sys/devices/system/cpu/cpu0/cache/index*; do
        [[ $(cat "$dir/level" 2>/dev/null) == 2 && $(cat "$dir/type") == Unified ]] || continue
        size=$(cat "$dir/size")
        [[ $size == *K ]] && size=$((${size%K} * 1024))
        [[ $size == *M ]] && size=$((${size%M} * 1024 * 1024))
        cache_args+=("--LL=$size,$(cat "$dir/ways_of_associativity"),$(cat "$dir/coherency_line_size")")
        last_level=L2
    done
fi

if [[ ${LOCKED:-0} == 1 ]]; then
    cache_args+=(--dump-instr=yes)
    command -v objdump >/dev/null || "$repo/scripts/apt-install.sh" binutils
fi

declare -A instructions requests misses locked
# Runs `command...` under callgrind on proxy_port, loads it and records its instructions
# per request under `name`.
count() { # name command...
    local name=$1 out=$work/callgrind.$1 pid n
    shift
    valgrind --tool=callgrind "${cache_args[@]}" --callgrind-out-file="$out" "$@" \
        >"$work/stdout.$name" 2>"$work/valgrind.$name.log" &
    pid=$!
    pids+=("$pid")
    wait_port "$proxy_port"
    wrk -t1 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$proxy_port/1k.bin" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    n=$(wrk -t1 -c"$CONNECTIONS" -d"$REQUESTS_FOR" "http://127.0.0.1:$proxy_port/1k.bin" |
        awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 100); do [[ -s $out.1 ]] && break; sleep 0.1; done
    [[ -s $out.1 ]] || { echo "$name: callgrind wrote no counts" >&2; exit 1; }
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    requests[$name]=$n
    instructions[$name]=$(awk -v n="$n" '/^summary:/ { printf "%.0f", $2 / n }' "$out.1")
    # With the cache simulation the summary reads: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
    misses[$name]=$(awk -v n="$n" '/^summary:/ && NF >= 10 {
        printf "%.0f %.0f %.0f %.0f %.0f", $5 / n, $6 / n, $7 / n, $9 / n, $10 / n }' "$out.1")
    # Read now: objdump needs the binaries, which go with $work.
    [[ ${LOCKED:-0} == 1 ]] && locked[$name]=$(python3 "$repo/scripts/bench/locked.py" "$out.1" "$n")
    return 0
}

names=(nginx hyper-paired hyper-pooled offload)
count nginx "$nginx_bin" -p "$work/proxy" -c "$work/proxy/nginx.conf"
count hyper-paired "$work/hyper_floor" paired "127.0.0.1:$proxy_port" "127.0.0.1:$upstream_port"
count hyper-pooled "$work/hyper_floor" pooled "127.0.0.1:$proxy_port" "127.0.0.1:$upstream_port"
count offload "$offload_bin" serve --config "$work/offload.toml"

printf '\n1k.bin through each proxy under callgrind, wrk -t1 -c%s -d%s\n' "$CONNECTIONS" "$REQUESTS_FOR"
printf '%-13s %10s %22s %10s' target requests "instructions/request" "vs nginx"
[[ -n ${CACHE_SIM:-} ]] && printf ' %13s %13s %13s %13s %13s' "L1i miss/req" "L1d rd/req" "L1d wr/req" \
    "$last_level rd/req" "$last_level wr/req"
[[ ${LOCKED:-0} == 1 ]] && printf ' %13s %13s' "locked/req" "clock/req"
echo
for name in "${names[@]}"; do
    ratio=$(awk -v a="${instructions[$name]}" -v b="${instructions[nginx]}" 'BEGIN { printf "%.2fx", a / b }')
    printf '%-13s %10s %22s %10s' "$name" "${requests[$name]}" "${instructions[$name]}" "$ratio"
    # shellcheck disable=SC2086 # five numbers
    [[ -n ${CACHE_SIM:-} ]] && printf ' %13s %13s %13s %13s %13s' ${misses[$name]}
    # shellcheck disable=SC2086 # two numbers
    [[ ${LOCKED:-0} == 1 ]] && printf ' %13s %13s' ${locked[$name]}
    echo
done
