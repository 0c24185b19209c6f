#!/usr/bin/env bash
# Load test: offload (release build) in front of nginx on 127.0.0.1, fs store in a temp dir.
#
#   scripts/load.sh [SECONDS] [CONNECTIONS]        # default 60 s, 1000 connections
#
# wrk keeps CONNECTIONS keep-alive connections busy with a mix (scripts/load/mix.lua):
# pass-through files, asset hits served by the app, assets only in the store (fallback),
# HTML pages rewritten on the way, and small multipart uploads (respond mode). Meanwhile a
# curl loop uploads random files and records every acknowledged (201) upload with the
# SHA-256 it computed itself; at the end each is checked in the store, byte for byte.
# Reports wrk's figures, answers by status and socket errors by kind, offload's RSS over
# time (sampled from /proc every second), and the upload verification.
#
# Needs: wrk, nginx, curl, python3. Everything listens on 127.0.0.1 only.
set -euo pipefail

secs=${1:-60}
conns=${2:-1000}
repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d /tmp/offload-load.XXXXXX)
chmod 755 "$work" # nginx workers run unprivileged
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "building offload (release)…"
(cd "$repo" && cargo build --release --bin offload >/dev/null 2>&1) || {
    echo "release build failed"; exit 1; }
offload="$target_dir/release/offload"

# --- the app: nginx serving a site with pages, assets and plain files ---------------------
site="$work/site"
mkdir -p "$site/wp-content/uploads" "$site/static" "$work/nginx"
head -c 1024 /dev/urandom >"$site/static/1k.bin"
head -c 16384 /dev/urandom >"$site/static/16k.bin"
for i in $(seq 1 20); do head -c 8192 /dev/urandom >"$site/wp-content/uploads/app-$i.jpg"; done
python3 - "$site/index.html" <<'PY'
import sys
imgs = "".join(
    f'<figure><img src="/wp-content/uploads/app-{i % 20 + 1}.jpg" '
    f'srcset="/wp-content/uploads/app-{i % 20 + 1}.jpg 1x, /wp-content/uploads/store-{i % 20 + 1}.jpg 2x">'
    f"<figcaption>Image {i} of the gallery, with some words around it.</figcaption></figure>\n"
    for i in range(100))
open(sys.argv[1], "w").write(f"<!doctype html><html><head><title>load</title></head><body>{imgs}</body></html>")
PY
app_port=$(free_port)
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    include /etc/nginx/mime.types;
    keepalive_requests 100000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$app_port;
        root $site;
        location / { try_files \$uri =404; }
    }
}
EOF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)

# --- offload on an fs store holding assets the app does not have --------------------------
store="$work/store"
mkdir -p "$store/objects/wp-content/uploads"
for i in $(seq 1 20); do head -c 8192 /dev/urandom >"$store/objects/wp-content/uploads/store-$i.jpg"; done
port=$(free_port)
cat >"$work/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "off"
max_headers = 100

[upstream]
url = "http://127.0.0.1:$app_port"
pool_max_idle = 256

[store]
kind = "fs"
root = "$store"

[assets]
prefixes = ["/wp-content/uploads/"]
origin_pull = false

[[uploads]]
path = "/upload"
mode = "respond"
max_file_size = "8MiB"

[log]
level = "warn"
EOF
"$offload" serve --config "$work/proxy.toml" >"$work/offload.log" 2>&1 &
offload_pid=$!
pids+=($offload_pid)
for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/static/1k.bin" && break
    sleep 0.1
done

# --- RSS sampler -------------------------------------------------------------------------
(while kill -0 "$offload_pid" 2>/dev/null; do
    awk -v t="$(date +%s)" '/VmRSS/ {print t, $2}' "/proc/$offload_pid/status" 2>/dev/null
    sleep 1
done) >"$work/rss.txt" &
pids+=($!)

# --- the upload client: every acknowledged upload, with its own SHA-256 ------------------
(end=$(( $(date +%s) + secs )); n=0
while (( $(date +%s) < end )); do
    n=$((n + 1)); f="$work/up-$n.bin"
    head -c $(( (RANDOM % 512 + 1) * 1024 )) /dev/urandom >"$f"
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    out=$(curl -s -m 30 -w '\n%{http_code}' -H 'Expect:' -F "file=@$f;filename=up-$n.bin" \
        "http://127.0.0.1:$port/upload" || echo $'\n000')
    code=${out##*$'\n'}
    if [[ $code == 201 ]]; then
        key=$(printf '%s' "${out%$'\n'*}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["key"])')
        echo "$key $sum" >>"$work/acked.txt"
    else
        echo "$code" >>"$work/upload-errors.txt"
    fi
    rm -f "$f"
done) &
uploader=$!

# --- wrk ---------------------------------------------------------------------------------
echo "wrk: ${conns} connections, ${secs}s, against offload on 127.0.0.1:$port"
wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s --latency -s "$repo/scripts/load/mix.lua" \
    "http://127.0.0.1:$port" | tee "$work/wrk.txt"
wait "$uploader" || true

# --- report ------------------------------------------------------------------------------
echo
echo "== offload RSS (KiB) over time"
awk 'NR==1 {t0=$1} {printf "%s+%ds:%s ", "", $1-t0, $2} END {print ""}' "$work/rss.txt"
awk '{if ($2>m) m=$2} END {print "peak RSS: " m " KiB"}' "$work/rss.txt"

echo "== uploads by the curl client"
acked=0; ok=0; bad=0
if [[ -f "$work/acked.txt" ]]; then
    while read -r key sum; do
        acked=$((acked + 1))
        file="$store/objects/$key"
        if [[ -f "$file" ]] && [[ $(sha256sum "$file" | cut -d' ' -f1) == "$sum" ]]; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1)); echo "MISSING OR CORRUPT: $key"
        fi
    done <"$work/acked.txt"
fi
failed=$( [[ -f "$work/upload-errors.txt" ]] && sort "$work/upload-errors.txt" | uniq -c | tr '\n' ' ' || echo none)
echo "acknowledged: $acked, verified by SHA-256: $ok, missing or corrupt: $bad; refused by status: $failed"
echo "== offload warnings and errors"
grep -c '' "$work/offload.log" | xargs echo "log lines:"
grep -v '^$' "$work/offload.log" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 || true
[[ $bad -eq 0 ]]
