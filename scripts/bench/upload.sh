#!/usr/bin/env bash
# Upload routes against the AWS CLI: the same 1 GiB file posted with curl through offload
# in respond mode and in mirror mode (to an app that discards the body), and
# copied with `aws s3 cp` to the same s3s-fs server, in one run. Prints throughputs, ratios
# to the direct copy, and offload's peak RSS. Targets: >= 0.85x direct, peak RSS <= 64 MiB.
# offload is the binary as deployed (scripts/build-release.sh), or OFFLOAD_BIN.
#
#   scripts/bench/upload.sh
#   SIZE_MIB=256 scripts/bench/upload.sh
#
# Needs: s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked), Debian's awscli
# (/usr/bin/aws), GNU time, curl. offload runs `offload serve` with an s3 store and one
# [[uploads]] route; the app is examples/upload_bench.rs, which discards
# bodies.
# Note: the s3s-fs binary does not set TCP_NODELAY (see TESTING.md); both offload's and the
# CLI's PUTs go through the same server, so the comparison stays fair.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/main/target}
WORK=${BENCH_DIR:-/tmp/offload-bench-upload}
SIZE_MIB=${SIZE_MIB:-1024}
S3_PORT=${S3_PORT:-9025}
APP_PORT=${APP_PORT:-9026}
PROXY_PORT=${PROXY_PORT:-9027}
S3SFS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$S3SFS" ] || { echo "install s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
[ -x /usr/bin/aws ] || { echo "install the CLI: apt-get install -y awscli" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "install GNU time: apt-get install -y time" >&2; exit 1; }

cargo build --quiet --release --example upload_bench
BIN=$CARGO_TARGET_DIR/release/examples/upload_bench
if [[ -n ${OFFLOAD_BIN:-} ]]; then
    OFFLOAD=$OFFLOAD_BIN
else
    OFFLOAD=$(scripts/build-release.sh)
fi

rm -rf "$WORK" && mkdir -p "$WORK/data/bench"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/file"
export AWS_ACCESS_KEY_ID=AKBENCH AWS_SECRET_ACCESS_KEY=bench-secret-key
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_REGION=us-east-1
printf '[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n' >"$AWS_CONFIG_FILE"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

"$S3SFS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/data" >"$WORK/s3s-fs.log" 2>&1 &
PIDS+=($!)
"$BIN" app "127.0.0.1:$APP_PORT" &
PIDS+=($!)
wait_port "$S3_PORT"; wait_port "$APP_PORT"
ENDPOINT=http://127.0.0.1:$S3_PORT

now() { date +%s.%N; }

# One offload process per mode, under GNU time for its peak RSS.
run_mode() {
    local mode=$1
    cat >"$WORK/offload-$mode.toml" <<CONF
[server]
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "off"
[upstream]
url = "http://127.0.0.1:$APP_PORT"
[store]
kind = "s3"
bucket = "bench"
region = "us-east-1"
endpoint = "$ENDPOINT"
path_style = true
[[uploads]]
path = "/upload"
mode = "$mode"
max_file_size = "2GiB"
max_body_size = "2GiB"
[log]
level = "warn"
CONF
    /usr/bin/time -v -o "$WORK/time-$mode.txt" "$OFFLOAD" serve --config "$WORK/offload-$mode.toml" \
        >"$WORK/offload-$mode.log" 2>&1 &
    local pid=$!
    wait_port "$PROXY_PORT"
    local t0 t1
    t0=$(now)
    curl -sS -o "$WORK/answer-$mode.json" -w '%{http_code}\n' -H 'Expect:' \
        -F "file=@$WORK/file;filename=$mode.bin;type=application/octet-stream" \
        "http://127.0.0.1:$PROXY_PORT/upload" >"$WORK/status-$mode.txt"
    t1=$(now)
    # $pid is GNU time; the proxy is its only child: stop that one, by its id.
    kill -TERM "$(pgrep -P "$pid")" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$t0 $t1"
}

read -r r0 r1 < <(run_mode respond)
read -r m0 m1 < <(run_mode mirror)
c0=$(now)
/usr/bin/aws --endpoint-url "$ENDPOINT" s3 cp "$WORK/file" s3://bench/cli.bin --only-show-errors
c1=$(now)

rss() { awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/time-$1.txt"; }
echo "respond: HTTP $(cat "$WORK/status-respond.txt"); mirror: HTTP $(cat "$WORK/status-mirror.txt")"
python3 - "$SIZE_MIB" "$r0" "$r1" "$m0" "$m1" "$c0" "$c1" "$(rss respond)" "$(rss mirror)" <<'PY'
import sys
mib = float(sys.argv[1])
r0, r1, m0, m1, c0, c1 = map(float, sys.argv[2:8])
rss_r, rss_m = int(sys.argv[8]), int(sys.argv[9])
cli = mib / (c1 - c0)
for name, t0, t1, rss in (("respond", r0, r1, rss_r), ("mirror", m0, m1, rss_m)):
    rate = mib / (t1 - t0)
    print(f"offload {name}: {mib:.0f} MiB in {t1 - t0:.2f} s = {rate:.1f} MiB/s, "
          f"{rate / cli:.2f}x direct, peak RSS {rss / 1024:.1f} MiB")
print(f"aws s3 cp (direct): {mib:.0f} MiB in {c1 - c0:.2f} s = {cli:.1f} MiB/s")
PY
# Each stored copy must be the file itself.
for f in "$WORK"/data/bench/*/*/*/*/respond.bin "$WORK"/data/bench/*/*/*/*/mirror.bin; do
    [ -f "$f" ] && cmp "$WORK/file" "$f" && echo "$(basename "$f"): identical to the source"
done
rm -rf "$WORK"
