#!/usr/bin/env bash
# The training run of the release build (scripts/build-release.sh): takes the instrumented
# offload in OFFLOAD_BIN through its main paths, so that the optimised build knows which code
# is hot there. Each path runs for TRAIN_SECONDS (default 4) under wrk, on 127.0.0.1 high ports:
#   - pass-through of 1 KiB and 200 KiB answers and of 16 KiB request bodies (a static nginx
#     upstream, which refuses the POSTs: the bodies are still streamed to it);
#   - a 200 KiB WordPress-like page with ~1,700 upload URLs, rewritten;
#   - multipart uploads into the filesystem store (respond mode), then those files served
#     back from the store.
# It runs with the default log level, so the access line of every request is trained too.
# offload is stopped with SIGTERM at the end: it exits normally and writes its profile.
#
#   OFFLOAD_BIN=target/pgo-instrumented/x86_64-unknown-linux-gnu/release/offload scripts/pgo-train.sh
set -euo pipefail

[[ -n ${OFFLOAD_BIN:-} ]] || { echo "OFFLOAD_BIN must name the instrumented binary" >&2; exit 1; }
DURATION=${TRAIN_SECONDS:-4}s
THREADS=1
CONNECTIONS=64
BASE_PORT=${BASE_PORT:-28480}
UPSTREAM_PORT=$((BASE_PORT + 1))
OFFLOAD_PORT=$((BASE_PORT + 3))

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench/lib.sh
. "$repo/scripts/bench/lib.sh"

mkdir -p "$work/www" "$work/store"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c $((200 * 1024)) /dev/urandom >"$work/www/200k.bin"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$work/upload.bin"
write_page "$work/www/page.html"
chmod 644 "$work/www/"*
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

upstream_conf "$UPSTREAM_PORT" 1
cat >"$work/offload.toml" <<CONF
[server]
listen = "127.0.0.1:$OFFLOAD_PORT"
admin_listen = "off"
[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"
[store]
kind = "fs"
root = "$work/store"
[assets]
prefixes = ["/wp-content/uploads/"]
site_origins = ["https://example.com"]
assume_present = true
[[uploads]]
path = "/upload"
mode = "respond"
# The default level: an access line per request, as deployed offload writes them.
[log]
level = "info"
CONF
start direct "$nginx_bin" -p "$work/upstream" -c "$work/upstream/nginx.conf"
start offload "$offload_bin" serve --config "$work/offload.toml" >"$work/offload.log" 2>&1
wait_port "$UPSTREAM_PORT"
wait_port "$OFFLOAD_PORT"

proxy=http://127.0.0.1:$OFFLOAD_PORT
train() { # what url [wrk options]
    echo "training: $1" >&2
    wrk -t$THREADS -c$CONNECTIONS -d"$DURATION" "${@:3}" "$2" | grep -E "Requests/sec|Non-2xx" >&2
}
train "1 KiB pass-through" "$proxy/1k.bin"
train "200 KiB pass-through" "$proxy/200k.bin"
train "request bodies" "$proxy/1k.bin" -s "$work/post.lua"
train "rewriting" "$proxy/page.html"
echo "training: uploads" >&2
for n in $(seq 16); do
    curl -fsS -H 'Expect:' -F "file=@$work/upload.bin;filename=file-$n.bin;type=application/octet-stream" \
        "$proxy/upload" >"$work/upload-$n.json"
done
url=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"][0]["url"])' \
    "$work/upload-16.json")
curl -fsS "$proxy$url" | cmp - "$work/upload.bin"
train "assets from the store" "$proxy$url"
