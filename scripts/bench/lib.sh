# Shared set-up of the wrk benchmarks (sourced, not run): installs nginx and wrk when
# missing, builds offload --release and copies it into a private work folder ($work), and
# stops every process whose PID is added to $pids when the script ends.
#
# Callers set `repo` first; afterwards they have `nginx_bin`, `offload_bin`, `work`, `pids`.

need_apt=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}" >&2
    apt-get install -y -qq "${need_apt[@]}" >/dev/null || {
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
    }
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

(cd "$repo" && cargo build --release --quiet --bin offload)

work=$(mktemp -d /tmp/offload-bench.XXXXXX)
# nginx's workers read the pages from here.
chmod 755 "$work"
# A private copy: a shared target directory may get another build's binary any moment.
cp "${CARGO_TARGET_DIR:-$repo/target}/release/offload" "$work/offload"
offload_bin=$work/offload
"$offload_bin" --help | grep -q check-config || { echo "$offload_bin is not this offload" >&2; exit 1; }
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
