#!/usr/bin/env bash
# Builds the release binary as it is deployed (deploy/Dockerfile) and benchmarked
# (scripts/bench/): optimised with the profile of a training run (PGO), and prints its path.
#
#   scripts/build-release.sh                # target/<host triple>/release/offload
#   OFFLOAD_PGO=0 scripts/build-release.sh  # plain `cargo build --release`: target/release/offload
#
# Profile-guided optimisation: cargo-pgo builds an instrumented offload, scripts/pgo-train.sh
# runs it through offload's main paths (pass-through of small and large answers, URL rewriting,
# uploads into the filesystem store, assets served from it), and the binary is built again with
# what that run counted: which branches are taken, which calls are hot, and so which code to
# inline and lay out together. On a 1 KiB pass-through request this saves ~1/8 of offload's CPU
# (mostly user space: the same instructions run with fewer cache misses and mispredictions).
#
# Needs llvm-profdata of rustc's LLVM (rustup's llvm-tools component, else Debian's llvm-N) and
# cargo-pgo (installed with cargo on first use), and what the training run needs (nginx-light,
# wrk, curl; installed by scripts/bench/lib.sh). The result is reused while the sources it was
# built from (HEAD and the working tree's changes) stay the same. Logs go to stderr.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf '[build-release %s] %s\n' "$(date +%T)" "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [[ ${OFFLOAD_PGO:-1} == 0 ]]; then
    cargo build --release --locked --quiet --bin offload >&2
    echo "$target_dir/release/offload"
    exit 0
fi

host=$(rustc -vV | awk '$1 == "host:" { print $2 }')
binary=$target_dir/$host/release/offload
stamp=$target_dir/pgo-sources.sha256
# What the binary is built from: outside a git checkout (an image build) nothing is reused.
if git rev-parse --git-dir >/dev/null 2>&1; then
    inputs=(src Cargo.toml Cargo.lock scripts/build-release.sh scripts/pgo-train.sh scripts/bench/lib.sh)
    sources=$( (git rev-parse HEAD && git status --porcelain -- "${inputs[@]}" &&
        git diff HEAD -- "${inputs[@]}") | sha256sum)
else
    sources="not a git checkout"
    rm -f "$stamp"
fi
if [[ -x $binary && -f $stamp && $(cat "$stamp") == "$sources" ]]; then
    log "up to date: $binary"
    echo "$binary"
    exit 0
fi

# llvm-profdata must read the profiles this rustc's LLVM writes.
if ! rustup component add llvm-tools >&2; then
    llvm_major=$(rustc -vV | awk '$1 == "LLVM" { split($3, v, "."); print v[1] }')
    log "rustup has no llvm-tools here: Debian's llvm-$llvm_major instead"
    "$repo/scripts/apt-install.sh" "llvm-$llvm_major"
    export PATH=$PATH:/usr/lib/llvm-$llvm_major/bin
fi
command -v cargo-pgo >/dev/null || cargo install --locked cargo-pgo@0.3.0 >&2

# The instrumented build has a target directory of its own: both builds keep their compiled
# dependencies instead of rebuilding each other's with the other's flags.
profiles=$target_dir/pgo-profiles
log "building the instrumented binary"
CARGO_TARGET_DIR=$target_dir/pgo-instrumented \
    cargo pgo build --profiles-dir "$profiles" -- --locked --bin offload >&2
log "training run"
OFFLOAD_BIN=$target_dir/pgo-instrumented/$host/release/offload "$repo/scripts/pgo-train.sh" >&2
log "building the optimised binary"
cargo pgo optimize --profiles-dir "$profiles" build -- --locked --bin offload >&2
echo "$sources" >"$stamp"
log "built $binary"
echo "$binary"
