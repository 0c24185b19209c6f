#!/usr/bin/env bash
# Rewriting benchmark: a 200 KiB WordPress-like page (about 1,700 upload URLs in src, srcset,
# href, style, og:image and JSON-escaped ld+json) served by nginx, fetched through
#   - offload (as deployed, every URL known present: assume_present = true), and
#   - nginx with sub_filter (two literal rules: the plain and the JSON-escaped spelling of
#     https://example.com/wp-content/uploads/, sub_filter_once off, Accept-Encoding cleared),
# in one run, on 127.0.0.1 high ports. Prints requests/s, p50/p99 and offload/nginx.
#
#   scripts/bench/rewrite.sh                 # builds offload as deployed (scripts/build-release.sh)
#   DURATION=30s CONNECTIONS=128 scripts/bench/rewrite.sh
#
# Fairness: both proxies keep a keep-alive pool to the upstream and write no access log;
# nginx runs PROXY_WORKERS workers (default: one per core), offload its default runtime (one
# thread per core). Both answer with the page rewritten and uncompressed (wrk sends no
# Accept-Encoding). wrk, the upstream and the proxy share the machine; "direct" is the ceiling.
# Conventions follow scripts/bench/passthrough.sh (branch proxy).
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_WORKERS=${PROXY_WORKERS:-$(nproc)}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BASE_PORT=${BASE_PORT:-28180}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
OFFLOAD_PORT=$((BASE_PORT + 3))

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"

mkdir -p "$work/www" "$work/upstream" "$work/proxy" "$work/store"
write_page "$work/www/page.html"
chmod 644 "$work/www/"*
urls=$(grep -o 'example.com[\\/]*wp-content[\\/]*uploads' "$work/www/page.html" | wc -l)

upstream_conf "$UPSTREAM_PORT" "$UPSTREAM_WORKERS"
# nginx's side of the comparison: the plain and the JSON-escaped spelling of the origin's
# upload URLs, on an uncompressed answer.
sub_filter=$(
    cat <<'NGINX'
proxy_set_header Accept-Encoding "";
            sub_filter_once off;
            sub_filter 'https://example.com/wp-content/uploads/' 'https://cdn.example.com/wp-content/uploads/';
            sub_filter 'https:\/\/example.com\/wp-content\/uploads\/' 'https:\/\/cdn.example.com\/wp-content\/uploads\/';
NGINX
)
proxy_conf "$NGINX_PORT" "$UPSTREAM_PORT" "$PROXY_WORKERS" "$sub_filter"
cat >"$work/offload.toml" <<CONF
[server]
listen = "127.0.0.1:$OFFLOAD_PORT"
admin_listen = "off"
[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"
[store]
kind = "fs"
root = "$work/store"
public_url = "https://cdn.example.com/"
[assets]
prefixes = ["/wp-content/uploads/"]
site_origins = ["https://example.com"]
assume_present = true
[log]
level = "warn"
CONF

declare -A port_of=([direct]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [offload]=$OFFLOAD_PORT)
start_servers

for port in $UPSTREAM_PORT $NGINX_PORT $OFFLOAD_PORT; do wait_port "$port"; done
# Both proxies must answer the same rewritten page.
curl -fsS "http://127.0.0.1:$NGINX_PORT/page.html" >"$work/nginx.out"
curl -fsS "http://127.0.0.1:$OFFLOAD_PORT/page.html" >"$work/offload.out"
left=$(grep -c 'https://example.com/wp-content/uploads' "$work/offload.out" || true)
if ! cmp -s "$work/nginx.out" "$work/offload.out"; then
    echo "warning: offload's and nginx's pages differ" >&2
fi
[[ $left == 0 ]] || { echo "offload left $left URLs unrewritten" >&2; exit 1; }

page_kib=$(($(stat -c %s "$work/www/page.html") / 1024))
echo "page: ${page_kib} KiB, $urls upload URLs; wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency;" \
    "nginx workers: $PROXY_WORKERS, upstream workers: $UPSTREAM_WORKERS, $(nproc) cores"
for name in direct nginx offload; do
    wrk_run "$name" "http://127.0.0.1:${port_of[$name]}/page.html" "${pid_of[$name]}"
done
printf '\n%-8s %12s %10s %10s %10s %12s\n' target "requests/s" "MB/s" "p50 ms" "p99 ms" "CPU us/req"
for name in direct nginx offload; do
    mbs=$(awk -v r="${rps[$name]}" -v k="$page_kib" 'BEGIN { printf "%.0f", r * k * 1024 / 1e6 }')
    printf '%-8s %12s %10s %10s %10s %12s\n' "$name" "${rps[$name]}" "$mbs" "${p50[$name]}" "${p99[$name]}" "${cpu_us[$name]}"
done
awk -v o="${rps[offload]}" -v n="${rps[nginx]}" -v op="${p99[offload]}" -v np="${p99[nginx]}" \
    -v oc="${cpu_us[offload]}" -v nc="${cpu_us[nginx]}" \
    'BEGIN { printf "offload/nginx sub_filter: requests/s %.2fx, p99 %.2fx, CPU/request %.2fx\n", o / n, op / np, oc / nc }'
