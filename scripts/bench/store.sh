#!/usr/bin/env bash
# offload's store layer against the AWS CLI: the same file streamed into the same s3s-fs
# server in one run; prints both throughputs, their ratio, and offload's peak RSS.
#
#   scripts/bench/store.sh            # 1 GiB, default parts (8 MiB x 4)
#   SIZE_MIB=256 scripts/bench/store.sh
#
# Needs: s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked), Debian's awscli
# (/usr/bin/aws: a pip-installed `aws` earlier on PATH is avoided on purpose), GNU time.
# The example is built in the dev profile: every dependency is at opt-level 3 there
# (Cargo.toml), and the store's own code does no per-byte work besides calling them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/main/target}
WORK=${BENCH_DIR:-/tmp/offload-bench-store}
SIZE_MIB=${SIZE_MIB:-1024}
PORT=${PORT:-9015}
S3SFS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$S3SFS" ] || { echo "install s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
[ -x /usr/bin/aws ] || { echo "install the CLI: apt-get install -y awscli" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "install GNU time: apt-get install -y time" >&2; exit 1; }

cargo build --quiet --example store_put
BIN=$CARGO_TARGET_DIR/debug/examples/store_put

rm -rf "$WORK" && mkdir -p "$WORK/data/bench"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/file"
export AWS_ACCESS_KEY_ID=AKBENCH AWS_SECRET_ACCESS_KEY=bench-secret-key
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_REGION=us-east-1
printf '[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n' >"$AWS_CONFIG_FILE"

"$S3SFS" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/data" >"$WORK/s3s-fs.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
ENDPOINT=http://127.0.0.1:$PORT

now() { date +%s.%N; }
t0=$(now)
/usr/bin/time -v -o "$WORK/time.txt" "$BIN" "$ENDPOINT" bench offload.bin "$WORK/file" | tee "$WORK/offload.txt"
t1=$(now)
/usr/bin/aws --endpoint-url "$ENDPOINT" s3 cp "$WORK/file" s3://bench/cli.bin --only-show-errors
t2=$(now)

rss_kib=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/time.txt")
python3 - "$SIZE_MIB" "$t0" "$t1" "$t2" "$rss_kib" <<'PY'
import sys
mib, t0, t1, t2, rss = float(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
offload, cli = mib / (t1 - t0), mib / (t2 - t1)
print(f"offload (process, wall): {mib:.0f} MiB in {t1 - t0:.2f} s = {offload:.1f} MiB/s")
print(f"aws s3 cp (process, wall): {mib:.0f} MiB in {t2 - t1:.2f} s = {cli:.1f} MiB/s")
print(f"ratio offload/cli: {offload / cli:.2f}")
print(f"offload peak RSS: {rss / 1024:.1f} MiB")
PY
cmp "$WORK/file" "$WORK/data/bench/offload.bin" && echo "offload.bin: identical to the source"
rm -rf "$WORK"
