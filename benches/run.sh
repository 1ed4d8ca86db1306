#!/usr/bin/env bash
# ocirelay vs Caddy vs nginx vs direct, against the Docker Hub double, in one run.
#
#   bash benches/run.sh               # full run (~15 min on 2 cores), rewrites BENCHMARKS.md
#   QUICK=1 bash benches/run.sh       # ~3-4 min smoke run (writes benches/results/quick/)
#
# What it does (see BENCHMARKS.md for the why):
#  1. installs what is missing (Debian: caddy nginx gnuplot-nox openssl jq util-linux,
#     linux-perf for the profile) with apt-get, builds ocirelay and the bench tools
#     (benches/loadgen: load generator, double launcher, report builder);
#  2. starts the Docker Hub double (tests/hubdouble: TLS registry, token host, signed-URL CDN
#     with 307 blob redirects) with a ~2 KiB manifest / 1 MiB blob image and a 1 GiB image;
#  3. for each view ("box": everything unpinned, default worker counts; "core": each proxy on
#     core 0 with one worker, load generator and double on core 1), starts Caddy, nginx and
#     ocirelay (twice: digest verification on and off) and runs every workload against every
#     target, interleaved round by round (the target order rotates every round);
#     Caddy's and nginx's configs are written by benches/anchors.sh (tuned as a careful
#     operator would: enough upstream keep-alive, no request limit, streaming);
#  4. writes benches/results/<run>/results.jsonl, the ratio chart and BENCHMARKS.md (the part
#     between the GENERATED markers), and profiles ocirelay with perf in its worst workload.
#
# Knobs (env): ROUNDS (3), DUR (seconds per timed measurement, 2.5), BIG_SIZE (1 GiB),
# VIEWS ("box core"), ONLY (space-separated workload names), PORT_BASE (18400),
# PROFILE (1), MICRO (0: 1 runs `cargo bench --bench hot_path` first), SKIP_INSTALL, SKIP_BUILD,
# OUT (BENCHMARKS.md path), QUIET_PCT (10: before each measurement, wait until other processes
# use less than this % of one core...), QUIET_MAX (15 s per wait), QUIET_BUDGET (240 s of
# waiting per run), RETRY_OTHER (0.3: a measurement during which other processes used more than
# this many cores is repeated once). Exit status: 0 when every correctness gate passed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-3}
    DUR=${DUR:-1}
    BIG_SIZE=${BIG_SIZE:-268435456}
    ONLY=${ONLY:-"manifest_get_c64 cold_c16 blob1m_c32 blob1g_c1"}
    RUN_NAME=${RUN_NAME:-quick}
    PROFILE=${PROFILE:-0}
else
    ROUNDS=${ROUNDS:-3}
    DUR=${DUR:-2.5}
    BIG_SIZE=${BIG_SIZE:-1073741824}
    ONLY=${ONLY:-}
    RUN_NAME=${RUN_NAME:-latest}
    PROFILE=${PROFILE:-1}
fi
VIEWS=${VIEWS:-"box core"}
PORT_BASE=${PORT_BASE:-18400}
MICRO=${MICRO:-0}
OUT=${OUT:-}
if [ -z "$OUT" ]; then
    if [ "$QUICK" = 1 ]; then OUT=$ROOT/benches/results/quick/BENCHMARKS.quick.md; else OUT=$ROOT/BENCHMARKS.md; fi
fi
RESULTS=$ROOT/benches/results/$RUN_NAME
TOOLS=$ROOT/target/benchtools/release

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------ install
install_missing() {
    local missing=()
    command -v caddy >/dev/null || missing+=(caddy)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v jq >/dev/null || missing+=(jq)
    command -v taskset >/dev/null || missing+=(util-linux)
    if [ "$PROFILE" = 1 ]; then command -v perf >/dev/null || missing+=(linux-perf); fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        local sudo=
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get install -y "${missing[@]}" >&2 || {
            $sudo apt-get update >&2 && $sudo apt-get install -y "${missing[@]}" >&2
        }
    fi
}
[ "${SKIP_INSTALL:-0}" = 1 ] || install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CORES=$(nproc)
if [ "$CORES" -lt 2 ]; then
    log "the per-core view needs 2 cores; running the box view only"
    VIEWS=box
fi

# ------------------------------------------------------------------ build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building ocirelay and the bench tools (release)"
    cargo build --release --bin ocirelay >&2
    cargo build --release --manifest-path benches/loadgen/Cargo.toml \
        --target-dir target/benchtools >&2
fi
if [ "$MICRO" = 1 ]; then
    log "micro benchmarks: cargo bench --bench hot_path"
    cargo bench --bench hot_path >&2
fi

# ------------------------------------------------------------------ processes
W=$(mktemp -d /tmp/ocirelay-bench.XXXXXX)
PIDS=()
DOUBLE_PID=
HUB_CA_DIR=
cleanup() {
    set +e
    exec 7>&- 2>/dev/null # EOF on the double's stdin: it stops and removes its CA dir
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}" $DOUBLE_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}" $DOUBLE_PID; do kill -KILL "$pid" 2>/dev/null; done
    # The double removes its CA directory when it stops cleanly; not when killed.
    case $HUB_CA_DIR in /tmp/hubdouble-*) rm -rf "$HUB_CA_DIR" ;; esac
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # host port seconds
    local i
    for i in $(seq 1 $(($3 * 10))); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on $1:$2 after $3 s"
    return 1
}

mkdir -p "$RESULTS"
: >"$RESULTS/results.jsonl"
rm -f "$RESULTS"/profile.* "$RESULTS"/syscalls.*

# A private copy of the binary: a rebuild of target/ during the run changes nothing, and perf
# can still resolve its symbols.
mkdir -p "$W/bin"
cp "$ROOT/target/release/ocirelay" "$W/bin/ocirelay"
OCIRELAY=$W/bin/ocirelay

# ------------------------------------------------------------------ certificates
# Client-side TLS for the proxies: an ECDSA P-256 CA and a leaf for 127.0.0.1 / localhost
# (the same key type for all three proxies, as Caddy would obtain).
openssl ecparam -name prime256v1 -genkey -noout -out "$W/ca.key" 2>/dev/null
openssl req -x509 -new -key "$W/ca.key" -sha256 -days 2 -subj "/CN=ocirelay bench CA" \
    -out "$W/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$W/proxy.key.ec" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$W/proxy.key.ec" -out "$W/proxy.key"
openssl req -new -key "$W/proxy.key" -subj "/CN=localhost" -out "$W/proxy.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$W/ext.cnf"
openssl x509 -req -in "$W/proxy.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$W/ext.cnf" -out "$W/proxy.crt" 2>/dev/null
cat "$W/proxy.crt" "$W/ca.pem" >"$W/proxy.pem"
chmod 644 "$W"/*.pem "$W/proxy.key" "$W/proxy.crt"
chmod 755 "$W"

# ------------------------------------------------------------------ the double
log "starting the Docker Hub double (big blob: $BIG_SIZE bytes)"
mkfifo "$W/double.in"
"$TOOLS/benchdouble" --big-size "$BIG_SIZE" <"$W/double.in" >"$W/double.json" 2>"$W/double.err" &
DOUBLE_PID=$!
exec 7>"$W/double.in"
for _ in $(seq 1 600); do [ -s "$W/double.json" ] && break; sleep 0.1; done
[ -s "$W/double.json" ] || { log "the double did not start"; cat "$W/double.err" >&2; exit 1; }
D=$W/double.json
REG_URL=$(jq -r .registry_url "$D")
TOKEN_URL=$(jq -r .token_url "$D")
CDN_URL=$(jq -r .cdn_url "$D")
REG_HP=${REG_URL#https://}
TOKEN_HP=${TOKEN_URL#https://}
TOKEN_HP=${TOKEN_HP%%/*}
CDN_HP=${CDN_URL#https://}
HUB_CA=$(jq -r .ca_pem_path "$D")
HUB_CA_DIR=$(dirname "$HUB_CA")
cp "$HUB_CA" "$W/hub-ca.pem"
chmod 644 "$W/hub-ca.pem"
HUB_CA=$W/hub-ca.pem
SMALL_REPO=$(jq -r .small.repo "$D")
SMALL_MANIFEST=$(jq -r .small.manifest_digest "$D")
SMALL_MANIFEST_SIZE=$(jq -r .small.manifest_size "$D")
SMALL_LAYER=$(jq -r .small.layer_digest "$D")
SMALL_LAYER_SIZE=$(jq -r .small.layer_size "$D")
BIG_REPO=$(jq -r .big.repo "$D")
BIG_LAYER=$(jq -r .big.layer_digest "$D")
BIG_LAYER_SIZE=$(jq -r .big.layer_size "$D")
log "double: registry $REG_URL, token $TOKEN_URL, cdn $CDN_URL"

# ------------------------------------------------------------------ proxy configs
P_CADDY_TLS=$PORT_BASE
P_CADDY_HTTP=$((PORT_BASE + 1))
P_NGINX_TLS=$((PORT_BASE + 2))
P_NGINX_HTTP=$((PORT_BASE + 3))
P_OCI_TLS=$((PORT_BASE + 4))
P_OCI_HTTP=$((PORT_BASE + 5))
P_OCINV_TLS=$((PORT_BASE + 6))
P_OCINV_HTTP=$((PORT_BASE + 7))

# The anchors' configs (tuned as a careful operator would: benches/anchors.sh).
source "$ROOT/benches/anchors.sh"
ANCHOR_CERT=$W/proxy.pem
ANCHOR_KEY=$W/proxy.key
write_caddyfile() { anchor_caddyfile "$W/Caddyfile" "$P_CADDY_TLS" "$P_CADDY_HTTP"; }
write_nginx_conf() { anchor_nginx_conf "$W/nginx.conf" "$1" "$P_NGINX_TLS" "$P_NGINX_HTTP"; } # workers

write_ocirelay_conf() { # file workers verify tls_port http_port
    cat >"$1" <<EOF
listen = ["127.0.0.1:$5"]
workers = $2
# Caddy and nginx run without access logs too.
access_log = false

[[tls_listener]]
addr = "127.0.0.1:$4"
cert = "$W/proxy.pem"
key = "$W/proxy.key"

[limits]
verify_digests = $3

# The relay workloads measure relaying: no cache.
[cache]
enabled = false

[[registry]]
name = "docker.io"
upstream = "$REG_URL"
ca_file = "$HUB_CA"
EOF
}

CADDY_PID= NGINX_PID= OCI_PID= OCINV_PID=
PIN_PROXY=()
PIN_LOAD=()

start_proxies() { # view
    local view=$1 workers_nginx=auto workers_oci=0 gomax=$CORES
    if [ "$view" = core ]; then
        PIN_PROXY=(taskset -c 0)
        PIN_LOAD=(taskset -c 1)
        workers_nginx=1 workers_oci=1 gomax=1
        taskset -a -p -c 1 "$DOUBLE_PID" >/dev/null
    else
        PIN_PROXY=()
        PIN_LOAD=()
        taskset -a -p -c "0-$((CORES - 1))" "$DOUBLE_PID" >/dev/null
    fi
    write_caddyfile
    write_nginx_conf "$workers_nginx"
    write_ocirelay_conf "$W/ocirelay.toml" "$workers_oci" true "$P_OCI_TLS" "$P_OCI_HTTP"
    write_ocirelay_conf "$W/ocirelay-nv.toml" "$workers_oci" false "$P_OCINV_TLS" "$P_OCINV_HTTP"
    mkdir -p "$RESULTS/configs"
    cp "$W/Caddyfile" "$RESULTS/configs/Caddyfile.$view"
    cp "$W/nginx.conf" "$RESULTS/configs/nginx.conf.$view"
    cp "$W/ocirelay.toml" "$RESULTS/configs/ocirelay.toml.$view"
    cp "$W/ocirelay-nv.toml" "$RESULTS/configs/ocirelay-nv.toml.$view"

    HOME=$W XDG_DATA_HOME=$W/xdg XDG_CONFIG_HOME=$W/xdg GOMAXPROCS=$gomax \
        "${PIN_PROXY[@]}" caddy run --config "$W/Caddyfile" --adapter caddyfile \
        >"$W/caddy.$view.log" 2>&1 &
    CADDY_PID=$!
    PIDS+=("$CADDY_PID")
    "${PIN_PROXY[@]}" "$NGINX" -c "$W/nginx.conf" -p "$W/nginx/" -e "$W/nginx/error.log" \
        >"$W/nginx.$view.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    "${PIN_PROXY[@]}" "$OCIRELAY" --config "$W/ocirelay.toml" >"$W/ocirelay.$view.log" 2>&1 &
    OCI_PID=$!
    PIDS+=("$OCI_PID")
    "${PIN_PROXY[@]}" "$OCIRELAY" --config "$W/ocirelay-nv.toml" >"$W/ocirelay-nv.$view.log" 2>&1 &
    OCINV_PID=$!
    PIDS+=("$OCINV_PID")
    local p
    for p in $P_CADDY_TLS $P_CADDY_HTTP $P_NGINX_TLS $P_NGINX_HTTP $P_OCI_TLS $P_OCI_HTTP \
        $P_OCINV_TLS $P_OCINV_HTTP; do
        wait_port 127.0.0.1 "$p" 20 || {
            tail -n 20 "$W"/*."$view".log "$W/nginx/error.log" >&2 || true
            exit 1
        }
    done
}

stop_proxies() {
    local pid
    for pid in $CADDY_PID $NGINX_PID $OCI_PID $OCINV_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $CADDY_PID $NGINX_PID $OCI_PID $OCINV_PID; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# ------------------------------------------------------------------ workloads
# name | loadgen workload | client scheme | connections | object | timing
#   object: manifest (~2 KiB), token, small-blob (1 MiB), big-blob; timing: dur or once
WORKLOADS="
token_c16|token|https|16|token|dur
manifest_get_c1|manifest-get|https|1|manifest|dur
manifest_get_c64|manifest-get|https|64|manifest|dur
manifest_head_c64|manifest-head|https|64|manifest|dur
manifest_get_c64_plain|manifest-get|http|64|manifest|dur
cold_c16|cold|https|16|manifest|dur
blob1m_c32|blob|https|32|small-blob|dur
blob1g_c1|blob|https|1|big-blob|once
blob1g_c1_plain|blob|http|1|big-blob|once
"

targets_for() { # scheme object
    local t="caddy nginx ocirelay"
    [ "$1" = https ] && t="direct $t"
    case $2 in *blob) t="$t ocirelay_nv" ;; esac
    echo "$t"
}

base_of() { # target scheme
    case $1 in
    direct) echo "$REG_URL" ;;
    caddy) [ "$2" = https ] && echo "https://127.0.0.1:$P_CADDY_TLS" || echo "http://127.0.0.1:$P_CADDY_HTTP" ;;
    nginx) [ "$2" = https ] && echo "https://127.0.0.1:$P_NGINX_TLS" || echo "http://127.0.0.1:$P_NGINX_HTTP" ;;
    ocirelay) [ "$2" = https ] && echo "https://127.0.0.1:$P_OCI_TLS" || echo "http://127.0.0.1:$P_OCI_HTTP" ;;
    ocirelay_nv) [ "$2" = https ] && echo "https://127.0.0.1:$P_OCINV_TLS" || echo "http://127.0.0.1:$P_OCINV_HTTP" ;;
    esac
}

pid_of() {
    case $1 in
    caddy) echo "$CADDY_PID" ;; nginx) echo "$NGINX_PID" ;;
    ocirelay) echo "$OCI_PID" ;; ocirelay_nv) echo "$OCINV_PID" ;; *) echo "" ;;
    esac
}

QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-15}
QUIET_BUDGET=${QUIET_BUDGET:-240}
RETRY_OTHER=${RETRY_OTHER:-0.3}
QUIET_WAITED=0
RETRIES=0
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
busy_jiffies() { awk '/^cpu /{print $2+$3+$4; exit}' /proc/stat; }
# Waits (bounded) until the machine is quiet: between measurements only other jobs use CPU.
wait_quiet() {
    local start=$SECONDS a b pct
    while :; do
        a=$(busy_jiffies)
        sleep 0.2
        b=$(busy_jiffies)
        pct=$(((b - a) * 100 * 5 / CLK_TCK))
        [ "$pct" -lt "$QUIET_PCT" ] && break
        [ $((SECONDS - start)) -ge "$QUIET_MAX" ] && break
        [ $((QUIET_WAITED + SECONDS - start)) -ge "$QUIET_BUDGET" ] && break
        sleep 0.7
    done
    QUIET_WAITED=$((QUIET_WAITED + SECONDS - start))
}

# measure view round name workload scheme conns object timing target [duration]
# (one retry when other processes disturbed it; only the last attempt is recorded)
measure() {
    local line attempt
    for attempt in 1 2; do
        wait_quiet
        line=$(measure_once "$@")
        if [ "$attempt" = 1 ] && [ "$QUIET_WAITED" -lt "$QUIET_BUDGET" ] &&
            jq -e --argjson r "$RETRY_OTHER" '(.other_cpu_s // 0) / (.secs // 1) > $r' \
                <<<"$line" >/dev/null 2>&1; then
            RETRIES=$((RETRIES + 1))
            continue
        fi
        break
    done
    echo "$line" >>"$RESULTS/results.jsonl"
    printf '%s\n' "$line"
}

measure_once() {
    local view=$1 round=$2 name=$3 wl=$4 scheme=$5 conns=$6 object=$7 timing=$8 target=$9
    local dur=${10:-$DUR}
    local base realm args=() pid
    base=$(base_of "$target" "$scheme")
    if [ "$target" = direct ]; then realm=$TOKEN_URL; else realm=$base/token; fi
    args=(--base "$base" --workload "$wl" --ca "$W/ca.pem" --ca "$HUB_CA" --conns "$conns"
        --expect-realm "$realm" --upstream-pid "$DOUBLE_PID"
        --label "view=$view" --label "round=$round" --label "name=$name" --label "target=$target"
        --label "scheme=$scheme")
    pid=$(pid_of "$target")
    [ -n "$pid" ] && args+=(--proxy-pid "$pid")
    case $object in
    manifest)
        args+=(--repo "$SMALL_REPO" --digest "$SMALL_MANIFEST")
        # HEAD carries no body: its Docker-Content-Digest is checked instead.
        [ "$wl" = manifest-head ] || args+=(--size "$SMALL_MANIFEST_SIZE")
        ;;
    token) args+=(--repo "$SMALL_REPO") ;;
    small-blob) args+=(--repo "$SMALL_REPO" --digest "$SMALL_LAYER" --size "$SMALL_LAYER_SIZE") ;;
    big-blob) args+=(--repo "$BIG_REPO" --digest "$BIG_LAYER" --size "$BIG_LAYER_SIZE") ;;
    esac
    if [ "$timing" = once ]; then
        args+=(--max-requests 1 --duration 300 --timeout 60)
    else
        args+=(--duration "$dur" --timeout 20)
    fi
    local line
    line=$(timeout 400 "${PIN_LOAD[@]}" "$TOOLS/loadgen" "${args[@]}" 2>>"$W/loadgen.err") || true
    if [ -z "$line" ]; then
        line=$(jq -cn --arg v "$view" --arg r "$round" --arg n "$name" --arg t "$target" \
            --arg s "$scheme" '{error:"loadgen failed or timed out",labels:{view:$v,round:$r,name:$n,target:$t,scheme:$s}}')
    fi
    printf '%s\n' "$line"
}

summary() { # one short line per measurement
    jq -r '"\(.labels.view) r\(.labels.round) \(.labels.name) \(.labels.target): " +
        (if .error then "ERROR " + .error else
        "\(.rps|floor) req/s \(.mbps*10|floor/10) MB/s p50 \(.p50_ms) ms p99 \(.p99_ms) ms cpu \(.proxy_cpu_s // "-") s hwm \((.proxy_hwm_kb // 0)/1024|floor) MiB err \(.errors)" end)'
}

rotate() { # n words...: rotate left by n
    local n=$1
    shift
    local a=("$@") i
    for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[$(((i + n) % ${#a[@]}))]}"; done
}

selected() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# ------------------------------------------------------------------ profile (per-core view)
workload_line() { grep "^$1|" <<<"$WORKLOADS" || true; }

profile_core() {
    log "profiling (perf) in the per-core view"
    local name wl scheme conns object timing target pids line pname plist worst psecs
    # Syscalls, io_uring operations and context switches per request, for every proxy.
    for pname in manifest_get_c64 blob1g_c1; do
        line=$(workload_line "$pname")
        [ -n "$line" ] || continue
        IFS='|' read -r name wl scheme conns object timing <<<"$line"
        psecs=$(( $(printf '%.0f' "$DUR") + 2 ))
        [ "$timing" = once ] && psecs=12
        for target in caddy nginx ocirelay; do
            pids=$(pid_of "$target")
            [ "$target" = nginx ] && pids="$pids $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
            pids=$(echo $pids | tr ' ' ',')
            wait_quiet
            # perf ends by itself (no signals: background jobs of a script ignore SIGINT).
            timeout -k 5 $((psecs + 30)) perf stat -x, -e raw_syscalls:sys_enter,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,context-switches \
                -p "$pids" -o "$RESULTS/syscalls.$name.$target.csv" -- sleep "$psecs" >/dev/null 2>&1 &
            local sp=$!
            sleep 0.3
            measure_once profile 0 "$name" "$wl" "$scheme" "$conns" "$object" "$timing" "$target" \
                >"$RESULTS/syscalls.$name.$target.json"
            wait "$sp" 2>/dev/null || true
        done
    done
    # Where ocirelay's time goes: its worst workload (lowest throughput ratio to Caddy or nginx
    # in this view), the 1 GiB TLS blob and the small-request workload.
    worst=$("$TOOLS/benchreport" --worst "$RESULTS/results.jsonl" --view core 2>/dev/null || echo blob1g_c1)
    plist=$worst
    for pname in blob1g_c1 manifest_get_c64; do [[ " $plist " == *" $pname "* ]] || plist="$plist $pname"; done
    for pname in $plist; do
        line=$(workload_line "$pname")
        [ -n "$line" ] || continue
        IFS='|' read -r name wl scheme conns object timing <<<"$line"
        wait_quiet
        psecs=$(( $(printf '%.0f' "$DUR") + 2 ))
        [ "$timing" = once ] && psecs=12
        timeout -k 5 $((psecs + 30)) perf record -F 499 --call-graph dwarf,16384 -p "$OCI_PID" \
            -o "$W/perf.$name.data" -- sleep "$psecs" >"$W/perf.$name.log" 2>&1 &
        local pp=$!
        sleep 0.5
        measure_once profile 0 "$name" "$wl" "$scheme" "$conns" "$object" "$timing" ocirelay \
            >"$RESULTS/profile.$name.json"
        wait "$pp" 2>/dev/null || true
        timeout 180 perf report -i "$W/perf.$name.data" --no-children --sort dso,symbol --stdio -g none \
            --percent-limit 0.7 2>/dev/null | grep -v '^$' | head -60 >"$RESULTS/profile.$name.txt" || true
        timeout 180 perf report -i "$W/perf.$name.data" --no-children --sort dso --stdio -g none \
            2>/dev/null | grep -v '^$' | head -25 >"$RESULTS/profile.$name.dso.txt" || true
        # Who calls the hottest symbols (caller chains, trimmed).
        timeout 180 perf report -i "$W/perf.$name.data" --no-children --sort symbol --stdio -G \
            --percent-limit 3 2>/dev/null | grep -v '^$' | grep -v '^#' |
            grep -vE 'core::ops::function|std::|monoio::task|monoio::runtime|scoped_tls|catch_unwind|panicking|start_thread|UnsafeCell|CoreStage|Harness|poll_future|PollFn|MaybeDone|AssertUnwindSafe|block_on|Thread>::new|worker_thread|accept_loop' |
            head -150 >"$RESULTS/profile.$name.callers.txt" || true
    done
}

# ------------------------------------------------------------------ run
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $CORES"
    echo "kernel: $(uname -r)"
    echo "memory: $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "caddy: $(caddy version 2>/dev/null | head -1)"
    echo "nginx: $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
    echo "openssl: $(openssl version)"
    echo "rustc: $(rustc --version)"
    echo "ocirelay: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted src changes)')"
    echo "ocirelay_binary: built $(date -u -r "$ROOT/target/release/ocirelay" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$OCIRELAY" | cut -c1-12)"
    echo "rounds: $ROUNDS"
    echo "duration: $DUR"
    echo "big_size: $BIG_LAYER_SIZE"
    echo "manifest_size: $SMALL_MANIFEST_SIZE"
    echo "small_blob_size: $SMALL_LAYER_SIZE"
    echo "views: $VIEWS"
    echo "quick: $QUICK"
    echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/machine.txt"

T_START=$(date +%s)
for view in $VIEWS; do
    log "view $view: starting proxies"
    start_proxies "$view"
    # Warm-up (not recorded): connections, pools, page cache, JIT-free but cache-warm.
    for target in direct caddy nginx ocirelay ocirelay_nv; do
        "${PIN_LOAD[@]}" "$TOOLS/loadgen" --base "$(base_of "$target" https)" --workload manifest-get \
            --ca "$W/ca.pem" --ca "$HUB_CA" --repo "$SMALL_REPO" --conns 16 --duration 0.5 \
            >/dev/null 2>>"$W/loadgen.err" || true
        "${PIN_LOAD[@]}" "$TOOLS/loadgen" --base "$(base_of "$target" https)" --workload blob \
            --ca "$W/ca.pem" --ca "$HUB_CA" --repo "$SMALL_REPO" --digest "$SMALL_LAYER" \
            --size "$SMALL_LAYER_SIZE" --conns 8 --duration 0.5 >/dev/null 2>>"$W/loadgen.err" || true
    done
    for round in $(seq 1 "$ROUNDS"); do
        log "view $view: round $round/$ROUNDS"
        while IFS='|' read -r name wl scheme conns object timing; do
            [ -n "$name" ] || continue
            selected "$name" || continue
            # shellcheck disable=SC2046
            for target in $(rotate $((round - 1)) $(targets_for "$scheme" "$object")); do
                # Not in a pipeline: measure() updates the wait and retry counters.
                measure "$view" "$round" "$name" "$wl" "$scheme" "$conns" "$object" "$timing" "$target" \
                    >"$W/last.json"
                summary <"$W/last.json" >&2
            done
        done <<<"$WORKLOADS"
    done
    if [ "$PROFILE" = 1 ] && [ "$view" = core ] && command -v perf >/dev/null; then
        profile_core
    fi
    stop_proxies
done
T_END=$(date +%s)
echo "wall_seconds: $((T_END - T_START))" >>"$RESULTS/machine.txt"
echo "quiet_waited: $QUIET_WAITED" >>"$RESULTS/machine.txt"
echo "retries: $RETRIES" >>"$RESULTS/machine.txt"
echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"

log "report: $OUT"
gate=0
"$TOOLS/benchreport" --results "$RESULTS" --out "$OUT" --criterion "$ROOT/target/criterion" || gate=$?
log "done in $((T_END - T_START)) s; results in $RESULTS"
exit $gate
