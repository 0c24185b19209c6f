#!/usr/bin/env bash
# Fuzzes offload with libFuzzer (cargo-fuzz): every target in fuzz/, SECONDS each (default 60),
# one after another, starting from the seeds in fuzz/seeds/ and the corpus kept in
# fuzz/corpus/. Crashes land in fuzz/artifacts/TARGET/; a summary line per target at the end.
#
#   scripts/fuzz.sh 600                   # ten minutes per target
#   TARGETS="rewrite_html" scripts/fuzz.sh 60
#   SANITIZER=address scripts/fuzz.sh 60  # default: none (the code under test is safe Rust)
#
# Needs `cargo install cargo-fuzz`. Runs on the stable toolchain: RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass the -Z flags it needs. Builds into fuzz/target (a big first build).
set -euo pipefail

secs=${1:-60}
here=$(cd "$(dirname "$0")/../fuzz" && pwd)
cd "$here"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$here/target"
sanitizer=${SANITIZER:-none}
targets=${TARGETS:-$(cargo fuzz list)}

cargo fuzz build --sanitizer "$sanitizer"

mkdir -p logs
summary=()
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target"
    seeds=()
    [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
    dict=()
    case "$target" in
        rewrite_*) dict=("-dict=rewrite.dict") ;;
    esac
    echo "== $target: ${secs}s"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -print_final_stats=1 "${dict[@]}" >"logs/$target.log" 2>&1 || status=$?
    runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | tail -n 1 |
        awk '{print $2}' || true)
    crashes=$(find "artifacts/$target" -type f | wc -l)
    summary+=("$target: ${secs}s, ${runs:-?} runs, exit $status, $crashes artifact(s)")
    if [[ $status -ne 0 ]]; then
        tail -n 30 "logs/$target.log"
    fi
done
echo
printf '%s\n' "${summary[@]}"
