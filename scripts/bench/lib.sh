# Shared set-up of the wrk benchmarks (sourced, not run): installs nginx, wrk and curl when
# missing, builds offload as deployed (scripts/build-release.sh) unless OFFLOAD_BIN names the
# binary to measure, copies it into a private work folder ($work), and stops every process
# whose PID is added to $pids when the script ends.
#
# Callers set `repo` first; afterwards they have `nginx_bin`, `offload_bin`, `work`, `pids`.

need_apt=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
"$repo/scripts/apt-install.sh" "${need_apt[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -n ${OFFLOAD_BIN:-} ]]; then
    built_offload=$OFFLOAD_BIN
else
    built_offload=$("$repo/scripts/build-release.sh")
fi

work=$(mktemp -d /tmp/offload-bench.XXXXXX)
# nginx's workers read the pages from here.
chmod 755 "$work"
# A private copy: a shared target directory may get another build's binary any moment.
cp "$built_offload" "$work/offload"
offload_bin=$work/offload
"$offload_bin" --help | grep -q check-config || { echo "$offload_bin is not this offload" >&2; exit 1; }
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_port() { # port
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    [[ -f $work/offload.log ]] && cat "$work/offload.log" >&2
    exit 1
}

# wrk prints latencies as 812.00us / 1.52ms / 1.01s: normalise to ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.3f", n }'
}

# CPU time (clock ticks) a server has used so far: the process and its children (nginx's
# workers). Requests/s depend on what else the shared machine runs; CPU per request much less.
cpu_ticks() { # pid
    local total=0 pid stat
    for pid in "$1" $(pgrep -P "$1" || true); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after the command name ("(nginx)"): state is 3rd, utime 14th, stime 15th.
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
clock_ticks=$(getconf CLK_TCK)

# CPU time (clock ticks) the whole machine has been busy so far: every process, wrk and the
# upstream included, and the kernel's interrupt work (/proc/stat's user, nice, system, irq
# and softirq; not the time the hypervisor gave to other guests).
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# Resident KiB of a server: the process and its children (nginx's worker); `field` VmHWM
# gives their peaks instead.
rss_kib() { # pid [field]
    local total=0 pid kib
    for pid in "$1" $(pgrep -P "$1" || true); do
        kib=$(awk -v f="${2:-VmRSS}:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# Runs wrk against a URL served by the process `pid`; fills rps, p50, p99 (ms), cpu_us
# (the server's CPU microseconds per request) and machine_us (the whole machine's: where
# wrk, the upstream and the proxy share the cores, requests/s follow this sum) under `key`.
declare -A rps p50 p99 cpu_us machine_us
wrk_run() { # key url pid
    local out before after machine_before machine_after requests
    # A short warm-up fills the pools and the caches.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$2" >/dev/null
    before=$(cpu_ticks "$3")
    machine_before=$(machine_ticks)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
    machine_after=$(machine_ticks)
    after=$(cpu_ticks "$3")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    machine_us[$1]=$(awk -v t=$((machine_after - machine_before)) -v hz="$clock_ticks" -v n="$requests" \
        'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    rps[$1]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50[$1]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99[$1]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    cpu_us[$1]=$(awk -v t=$((after - before)) -v hz="$clock_ticks" -v n="$requests" \
        'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "warning: $1: $(grep "Non-2xx\|Socket errors" <<<"$out")" >&2
    fi
}

# Prints `label offload/nginx: …`, the ratios of the wrk results under key `ours` to those
# under `theirs`.
ratios() { # label ours theirs
    awk -v l="$1" -v o="${rps[$2]}" -v n="${rps[$3]}" -v op="${p99[$2]}" -v np="${p99[$3]}" \
        -v oc="${cpu_us[$2]}" -v nc="${cpu_us[$3]}" -v om="${machine_us[$2]}" -v nm="${machine_us[$3]}" \
        'BEGIN { printf "%-9s offload/nginx: requests/s %.2fx, p99 %.2fx, CPU/request %.2fx (machine %.2fx)\n",
                 l, o / n, op / np, oc / nc, om / nm }'
}

# Prints `label names per round: …` (names: default offload/nginx): the median, lowest and
# highest over rounds 1 … rounds of the per-round ratios of `ours` to `theirs` (keys
# ours/round, theirs/round) for requests/s, p99 and CPU per request. Each round measures both
# back to back, so a slow spell of the shared machine moves both figures of a pair; the
# median of the pairs shows less of it than the ratio of the medians.
paired_ratios() { # label ours theirs rounds [names]
    local round metric ours theirs values ratio ahead=0 ahead_in_round
    local -A per_round=()
    for round in $(seq "$4"); do
        ahead_in_round=1
        for metric in rps p99 cpu_us; do
            ours="${metric}[$2/$round]" theirs="${metric}[$3/$round]"
            ratio=$(awk -v o="${!ours}" -v n="${!theirs}" 'BEGIN { print o / n }')
            per_round[$metric]+="$ratio "
            # Ahead: at least the requests/s with at most the p99 (the issue's target).
            case $metric in
                rps) awk -v r="$ratio" 'BEGIN { exit !(r < 1) }' && ahead_in_round=0 ;;
                p99) awk -v r="$ratio" 'BEGIN { exit !(r > 1) }' && ahead_in_round=0 ;;
            esac
        done
        ahead=$((ahead + ahead_in_round))
    done
    printf '%-9s %s per round:' "$1" "${5:-offload/nginx}"
    for metric in rps p99 cpu_us; do
        read -r -a values <<<"${per_round[$metric]}"
        awk -v m="$metric" -v med="$(median "${values[@]}")" \
            -v lo="$(printf '%s\n' "${values[@]}" | sort -g | head -1)" \
            -v hi="$(printf '%s\n' "${values[@]}" | sort -g | tail -1)" \
            'BEGIN { name["rps"] = "requests/s"; name["p99"] = "p99"; name["cpu_us"] = "CPU/request";
                     printf "%s %s %.2fx (%.2f-%.2f)", (m == "rps" ? "" : ","), name[m], med, lo, hi }'
    done
    echo "; both requests/s and p99 ahead in $ahead of $4 rounds"
}

# The median of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Sets the figure `array[key]` to the median of array[key/1] … array[key/rounds].
median_into() { # array key rounds
    local -n figures=$1
    local round values=()
    for round in $(seq "$3"); do values+=("${figures[$2/$round]}"); done
    figures[$2]=$(median "${values[@]}")
}

# Sets every figure of `key` to its median over wrk runs key/1 … key/rounds.
medians() { # key rounds
    local metric
    for metric in rps p50 p99 cpu_us machine_us; do median_into "$metric" "$1" "$2"; done
}

# Writes a 200 KiB WordPress-like page, the same shape as benches/rewrite.rs: about 1,700
# upload URLs of https://example.com/wp-content/uploads/ in src, srcset, href, style, og:image
# and JSON-escaped ld+json.
write_page() { # file
    python3 - "$1" <<'PY'
import sys
target = 200 * 1024
html = ["<!doctype html><html><head><title>Blog</title>"
        "<meta property=\"og:image\" content=\"https://example.com/wp-content/uploads/2024/05/hero.jpg\">"
        "<link rel='stylesheet' href='https://example.com/wp-content/themes/t/style.css'>"
        "<style>.hero{background:url(https://example.com/wp-content/uploads/2024/05/hero.jpg)}</style></head><body>"]
size, i = len(html[0]), 0
while size < target:
    u = f"https://example.com/wp-content/uploads/2024/05/photo-{i}"
    part = (f"<article class=\"post\"><h2><a href=\"https://example.com/blog/post-{i}/\">Post {i}</a></h2>"
            "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>"
            f"<img width=\"1024\" height=\"768\" src=\"{u}.jpg\" alt=\"photo {i}\" "
            f"srcset=\"{u}.jpg 1024w, {u}-300x225.jpg 300w, {u}-768x576.jpg 768w\" "
            "sizes=\"(max-width: 1024px) 100vw, 1024px\" loading=\"lazy\">"
            f"<div class=\"bg\" style=\"background-image:url('{u}-bg.jpg')\"></div></article>\n")
    if i % 10 == 0:
        esc = u.replace("/", "\\/")
        part += ("<script type=\"application/ld+json\">{\"@type\":\"ImageObject\",\"url\":\""
                 f"{esc}.jpg\",\"width\":1024}}</script>\n")
    html.append(part)
    size += len(part)
    i += 1
html.append("</body></html>")
open(sys.argv[1], "w").write("".join(html))
PY
}

# Writes the static upstream's nginx.conf into $work/upstream: $work/www on 127.0.0.1:port.
upstream_conf() { # port workers
    mkdir -p "$work/upstream"
    cat >"$work/upstream/nginx.conf" <<CONF
daemon off; pid $work/upstream/nginx.pid; error_log $work/upstream/error.log warn; user root;
worker_processes $2;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    server { listen 127.0.0.1:$1; root $work/www; etag off; }
}
CONF
}

# Starts a server in the background as `name`: its PID goes to pid_of[name] and it is
# stopped when the script ends.
declare -A pid_of
start() { # name command...
    local name=$1
    shift
    "$@" &
    pid_of[$name]=$!
    pids+=($!)
}

# Writes nginx-as-proxy's config into $work/proxy: 127.0.0.1:port to the upstream on
# upstream_port through a keep-alive pool, setting the forwarding headers offload sets
# (nginx sets none by default; `Forwarded` is RFC 7239's, which offload sets next to the
# X-Forwarded ones); `extra` (directives) goes into its location block. Its access log is
# off unless PROXY_ACCESS_LOG holds the arguments of an `access_log` directive; each worker
# takes PROXY_WORKER_CONNECTIONS connections (default 4096).
proxy_conf() { # port upstream_port workers [extra]
    mkdir -p "$work/proxy"
    local connections=${PROXY_WORKER_CONNECTIONS:-4096}
    cat >"$work/proxy/nginx.conf" <<CONF
daemon off; pid $work/proxy/nginx.pid; error_log $work/proxy/error.log warn; user root;
worker_processes $3; worker_rlimit_nofile $((connections * 2));
events { worker_connections $connections; }
http {
    access_log ${PROXY_ACCESS_LOG:-off};
    tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    upstream app { server 127.0.0.1:$2; keepalive 256; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;host=\"\$host\";proto=\$scheme";
            proxy_buffers 32 8k;
            proxy_busy_buffers_size 64k;
            ${4:-}
        }
    }
}
CONF
}

# Writes $work/offload.toml: offload as a plain pass-through proxy on 127.0.0.1:port in front
# of the upstream on upstream_port, admin listener off; `workers` worker threads (default 1,
# 0: one per core), logging at `level` (default warn); `server_extra` and `log_extra` (TOML
# lines) go into [server] and [log]. Connections carry as many requests as nginx's here
# (keepalive_requests 1000000; both default to 1000).
offload_conf() { # port upstream_port [workers] [level] [server_extra] [log_extra]
    cat >"$work/offload.toml" <<CONF
[server]
listen = "127.0.0.1:$1"
admin_listen = "off"
worker_threads = ${3:-1}
keepalive_requests = 1000000
${5:-}
[upstream]
url = "http://127.0.0.1:$2"
[log]
level = "${4:-warn}"
${6:-}
CONF
}

# Starts the upstream nginx, nginx as proxy and offload, from the configs the caller wrote
# ($work/upstream, $work/proxy, $work/offload.toml), as direct, nginx and offload.
start_servers() {
    start direct "$nginx_bin" -p "$work/upstream" -c "$work/upstream/nginx.conf"
    start nginx "$nginx_bin" -p "$work/proxy" -c "$work/proxy/nginx.conf"
    start offload "$offload_bin" serve --config "$work/offload.toml" >"$work/offload.log" 2>&1
}
