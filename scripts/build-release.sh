#!/usr/bin/env bash
# Builds the release binary as it is deployed (deploy/Dockerfile) and benchmarked
# (scripts/bench/): optimised with the profile of a training run (PGO, then BOLT), and prints
# its path.
#
#   scripts/build-release.sh                 # target/<host triple>/release/offload-bolt
#   OFFLOAD_BOLT=0 scripts/build-release.sh  # PGO only: target/<host triple>/release/offload
#   OFFLOAD_PGO=0 scripts/build-release.sh   # plain `cargo build --release`: target/release/offload
#
# Profile-guided optimisation: cargo-pgo builds an instrumented offload, scripts/pgo-train.sh
# runs it through offload's main paths (pass-through of small and large answers, URL rewriting,
# uploads into the filesystem store, assets served from it), and the binary is built again with
# what that run counted: which branches are taken, which calls are hot, and so which code to
# inline and lay out together. On a 1 KiB pass-through request this saves ~1/8 of offload's CPU
# (mostly user space: the same instructions run with fewer cache misses and mispredictions).
# Then BOLT (llvm-bolt) lays out the linked binary once more from a second training run of
# its own instrumented copy: hot blocks of all functions together, cold ones split off, which
# the compiler cannot do as it places code one function at a time. On a 1 KiB request that
# saved ~2% of offload's CPU on average, ~7% while the machine was busy with other work (when
# code that fits in fewer cache lines and pages counts most), nothing while it was quiet.
# A short run of the training paths checks the result.
#
# Needs llvm-profdata of rustc's LLVM (rustup's llvm-tools component, else Debian's llvm-N),
# cargo-pgo (installed with cargo on first use), llvm-bolt (Debian 12's bolt-16, installed when
# missing; without it, on a machine whose apt has none, the PGO binary is the result, with a
# warning), and what the training run needs (nginx-light, wrk, curl; installed by
# scripts/bench/lib.sh). The result is reused while the sources it was built from (HEAD and the
# working tree's changes) stay the same. Logs go to stderr.
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
pgo_binary=$target_dir/$host/release/offload
bolt_binary=$pgo_binary-bolt
stamp=$target_dir/pgo-sources.sha256

# BOLT: llvm-bolt on PATH, else in Debian's LLVM folders, else Debian 12's bolt-16 from apt.
find_bolt() {
    local found debian=(/usr/lib/llvm-*/bin/llvm-bolt)
    found=$(command -v llvm-bolt) || found=$(printf '%s\n' "${debian[@]}" | sort -V | tail -1)
    # An unmatched glob stays the pattern itself: test for the program, not for emptiness.
    if [[ ! -x $found ]] && "$repo/scripts/apt-install.sh" bolt-16 >&2; then
        found=/usr/lib/llvm-16/bin/llvm-bolt
    fi
    [[ -x $found ]] && dirname "$found"
}
bolt_dir=
optimize_rustflags=${RUSTFLAGS:-}
binary=$pgo_binary
if [[ ${OFFLOAD_BOLT:-1} != 0 ]]; then
    if bolt_dir=$(find_bolt); then
        # llvm-bolt rewrites the linked binary and needs its relocations kept for that.
        optimize_rustflags="$optimize_rustflags -Clink-args=-Wl,--emit-relocs"
        binary=$bolt_binary
    else
        log "warning: no llvm-bolt here: the result is the PGO binary, without BOLT"
    fi
fi
# What the binary is built from: outside a git checkout (an image build) nothing is reused.
if git rev-parse --git-dir >/dev/null 2>&1; then
    inputs=(src Cargo.toml Cargo.lock scripts/build-release.sh scripts/pgo-train.sh scripts/bench/lib.sh)
    sources=$( (echo "$binary $optimize_rustflags" && git rev-parse HEAD &&
        git status --porcelain -- "${inputs[@]}" && git diff HEAD -- "${inputs[@]}") | sha256sum)
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
RUSTFLAGS=$optimize_rustflags cargo pgo optimize --profiles-dir "$profiles" build -- --locked --bin offload >&2
if [[ -n $bolt_dir ]]; then
    bolt_profiles=$target_dir/bolt-profiles
    rm -rf "$bolt_profiles"
    mkdir -p "$bolt_profiles"
    log "BOLT: instrumenting the optimised binary"
    "$bolt_dir/llvm-bolt" "$pgo_binary" -o "$pgo_binary-bolt-instrumented" -instrument \
        --instrumentation-file-append-pid --instrumentation-file="$bolt_profiles/offload" >&2
    log "BOLT: training run"
    OFFLOAD_BIN=$pgo_binary-bolt-instrumented "$repo/scripts/pgo-train.sh" >&2
    "$bolt_dir/merge-fdata" "$bolt_profiles"/*.fdata >"$bolt_profiles/merged.fdata"
    log "BOLT: laying out the binary"
    # cargo-pgo's choice of options (`cargo pgo bolt optimize`).
    "$bolt_dir/llvm-bolt" "$pgo_binary" -o "$bolt_binary" -data="$bolt_profiles/merged.fdata" \
        -reorder-blocks=ext-tsp -reorder-functions=hfsort -split-functions=2 -split-all-cold \
        -jump-tables=move -use-gnu-stack -split-eh -lite=1 -icf=1 -relocs >&2
    log "checking the result on the training paths"
    TRAIN_SECONDS=1 OFFLOAD_BIN=$bolt_binary "$repo/scripts/pgo-train.sh" >&2
fi
echo "$sources" >"$stamp"
log "built $binary"
echo "$binary"
