#!/usr/bin/env bash
# ocirelay's shared tier (issue 13) on a real S3 store on loopback (one `weed server -s3`
# process: master, volume, filer and S3 gateway), interleaved round by round:
#
#   direct   the load generator talks to the Docker Hub double itself
#   tier1    ocirelay node A, the object on its disk
#   tier2    a fresh node B (its cache dir wiped and the node restarted every round) whose
#            disk lacks the object but the bucket has it (uploaded by A: waited for until A's
#            /metrics shows ocirelay_shared_tier_uploads_pending 0)
#   redirect node R with redirect = true: blob GETs answered with a 307 (not followed)
#
# Workloads: big (one GET of the BIG blob), manifest_digest_c32 (manifest by digest, 32
# keep-alive connections, DUR s), small_c32 (the small image's layer on 32 connections:
# for redirect, the cost of the 307 itself; for tier1, a small hit).
#
#   QUICK=1 bash benches/shared.sh   # ~3 min: 1 round, 256 MiB: benches/results/shared-quick/
#   bash benches/shared.sh           # 3 rounds, 1 GiB: benches/results/shared/ + summary.md
#
# Knobs: ROUNDS, DUR, BIG, PORT (18800: 8 ports), BIN, WEED. Exit 1 on a wrong response.
set -euo pipefail
source "$(dirname "$0")/common.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1} DUR=${DUR:-1.5} BIG=${BIG:-268435456} RUN_NAME=${RUN_NAME:-shared-quick}
else
    ROUNDS=${ROUNDS:-3} DUR=${DUR:-3} BIG=${BIG:-1073741824} RUN_NAME=${RUN_NAME:-shared}
fi
PORT=${PORT:-18800}
BIN=${BIN:-$ROOT/target/release/ocirelay}
WEED=${WEED:-${OCIRELAY_WEED:-$(command -v weed || { [ -x /opt/ocirelay-venv/bin/weed ] && echo /opt/ocirelay-venv/bin/weed; } || echo /tmp/sw/bin/weed)}}
RESULTS=$ROOT/benches/results/$RUN_NAME
OUTJ=$RESULTS/results.jsonl
log() { printf '[shared %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ -x "$WEED" ] || { log "no weed binary (set WEED)"; exit 1; }
[ -x "$BIN" ] || cargo build --release --bin ocirelay --manifest-path "$ROOT/Cargo.toml" >&2

bench_workdir ocirelay-shared-bench
bench_certs
SOCK=$W/counts.sock
DOUBLE_ARGS=(--counts "$SOCK")
bench_double "$BIG"
[ -S "$SOCK" ] || { log "the double did not start: $(cat "$W/d.err")"; exit 1; }
REG_URL=$(jq -r .registry_url "$D") TOKEN_URL=$(jq -r .token_url "$D")
HUB_CA=$W/hub.pem
SR=$(jq -r .small.repo "$D") SM=$(jq -r .small.manifest_digest "$D") SMS=$(jq -r .small.manifest_size "$D")
SL=$(jq -r .small.layer_digest "$D") SLS=$(jq -r .small.layer_size "$D")
BR=$(jq -r .big.repo "$D") BL=$(jq -r .big.layer_digest "$D") BS=$(jq -r .big.layer_size "$D")
mkdir -p "$RESULTS/configs"
: >"$OUTJ"

wait_port() {
    for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    log "nothing listens on 127.0.0.1:$1"; tail -n 20 "$W"/*.log >&2 || true; exit 1
}

# ------------------------------------------------------------------ the store
S3P=$((PORT + 7)) MP=$((PORT + 20)) VP=$((PORT + 21)) FP=$((PORT + 22))
mkdir -p "$W/weed"
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"benchkey","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' >"$W/s3.json"
"$WEED" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$W/weed" -master.port=$MP -volume.port=$VP \
    -filer.port=$FP -s3 -s3.port=$S3P -s3.config="$W/s3.json" -volume.max=20 -master.volumeSizeLimitMB=256 \
    >"$W/weed.log" 2>&1 &
PIDS+=("$!")
wait_port "$S3P"
for i in $(seq 1 30); do
    echo "s3.bucket.create -name bench" | timeout 20 "$WEED" shell -master=127.0.0.1:$MP >>"$W/shell.log" 2>&1 &&
        ! grep -qi error "$W/shell.log" && break
    : >"$W/shell.log"; sleep 1
    [ "$i" = 30 ] && { log "bucket not created: $(cat "$W/shell.log")"; exit 1; }
done

start_node() { # name port redirect
    cat >"$W/$1.toml" <<EOT
listen = ["127.0.0.1:$2"]
access_log = false
metrics_listen = "public"
[[registry]]
name = "docker.io"
upstream = "$REG_URL"
ca_file = "$HUB_CA"
[cache]
enabled = true
dir = "$W/cache-$1"
tag_ttl = "1h"
max_size = "100GiB"
[cache.s3]
endpoint = "http://127.0.0.1:$S3P"
bucket = "bench"
access_key_id = "benchkey"
secret_access_key = "benchsecret"
redirect = $3
EOT
    cp "$W/$1.toml" "$RESULTS/configs/$1.toml"
    "$BIN" --config "$W/$1.toml" >>"$W/$1.log" 2>&1 &
    PIDS+=("$!")
    eval "PID_$1=$!"
    wait_port "$2"
}
stop_node() { # name
    local p
    eval "p=\$PID_$1"
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
wait_uploaded() { # port: until the node's upload queue is empty (at most 300 s)
    local v
    for _ in $(seq 1 1500); do
        v=$(curl -s "http://127.0.0.1:$1/metrics" | awk '/^ocirelay_shared_tier_uploads_pending /{print $2}')
        [ "$v" = 0 ] && return 0
        sleep 0.2
    done
    log "uploads still pending on :$1 ($v)"; return 1
}
base_of() { case $1 in direct) echo "$REG_URL" ;; tier1) echo "http://127.0.0.1:$PORT" ;;
    tier2) echo "http://127.0.0.1:$((PORT + 1))" ;; redirect) echo "http://127.0.0.1:$((PORT + 2))" ;; esac; }
pid_of() { case $1 in direct) echo "$DPID" ;; tier1) echo "$PID_a" ;; tier2) echo "$PID_b" ;; redirect) echo "$PID_r" ;; esac; }
wl_args() {
    case $1 in
    manifest_digest_c32) echo "--workload manifest-get --repo $SR --reference $SM --digest $SM --size $SMS --conns 32 --duration $DUR --timeout 20" ;;
    small_c32) echo "--workload blob --repo $SR --digest $SL --size $SLS --conns 32 --duration $DUR --timeout 20" ;;
    big) echo "--workload blob --repo $BR --digest $BL --size $BS --conns 1 --max-requests 1 --duration 300 --timeout 120 --upstream-counts $SOCK" ;;
    esac
}
measure() { # round workload target [extra loadgen args...]
    local r=$1 wl=$2 t=$3 line targs wargs
    shift 3
    targs=(--base "$(base_of "$t")" --ca "$W/ca.pem" --ca "$HUB_CA" --proxy-pid "$(pid_of "$t")" --upstream-pid "$DPID")
    if [ "$t" = direct ]; then targs+=(--expect-realm "$TOKEN_URL"); else targs+=(--expect-realm "$(base_of "$t")/token"); fi
    read -ra wargs <<<"$(wl_args "$wl")"
    line=$(timeout 600 "$TOOLS/loadgen" "${targs[@]}" "${wargs[@]}" "$@" --label "round=$r" --label "wl=$wl" \
        --label "target=$t" 2>>"$W/lg.err") || line=$(jq -cn --arg r "$r" --arg w "$wl" --arg t "$t" \
        --arg e "$(tail -n 1 "$W/lg.err")" '{error: ("loadgen failed: " + $e), errors: 1, labels: {round: $r, wl: $w, target: $t}}')
    echo "$line" >>"$OUTJ"
    jq -r '"r\(.labels.round) \(.labels.wl) \(.labels.target): " + if .error then .error else
        "\(.rps * 10 | floor / 10) req/s \(.mbps | floor) MB/s, \(.requests) ok, err \(.errors), p50 \(.p50_ms // "-") ms, upstream \(.upstream // {} | to_entries | map("\(.key)=\(.value)") | join(" "))" end' <<<"$line" >&2
}

# The 307 itself: N GETs of the small layer on one keep-alive connection (curl reuses it),
# anonymous (the double's small repo is public); every answer must be a 307.
redirect_cost() { # round
    local n=500 i t0 t1 codes tok base="http://127.0.0.1:$((PORT + 2))"
    tok=$(curl -s "$base/token?service=ocirelay&scope=repository:$SR:pull" | jq -r '.token // .access_token')
    : >"$W/curl.cfg"
    for ((i = 0; i < n; i++)); do printf 'url = "%s/v2/%s/blobs/%s"\noutput = "/dev/null"\n' "$base" "$SR" "$SL" >>"$W/curl.cfg"; done
    t0=$(date +%s%N)
    codes=$(timeout 120 curl -s -H "Authorization: Bearer $tok" -w '%{http_code}\n' -K "$W/curl.cfg" | sort | uniq -c | tr -s ' ')
    t1=$(date +%s%N)
    jq -cn --arg r "$1" --arg c "$codes" --argjson n $n --argjson ns $((t1 - t0)) \
        '{labels: {round: $r, wl: "redirect_c1", target: "redirect"}, requests: $n, rps: ($n * 1e9 / $ns),
          mean_ms: ($ns / 1e6 / $n), codes: $c, errors: (if $c == " \($n) 307" then 0 else 1 end)}' | tee -a "$OUTJ" >&2
}
log "nodes A (tier1), B (tier2), R (redirect) on one bucket"
start_node a "$PORT" false
start_node b "$((PORT + 1))" false
start_node r "$((PORT + 2))" true
# Into A's disk and, through A, into the bucket.
measure 0 big tier1 >/dev/null
measure 0 manifest_digest_c32 tier1 --max-requests 64
measure 0 small_c32 tier1 --max-requests 64
wait_uploaded "$PORT"
T0=$SECONDS
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS"
    for t in direct tier1 tier2; do
        if [ "$t" = tier2 ]; then stop_node b; rm -rf "$W/cache-b"; start_node b "$((PORT + 1))" false; fi
        measure "$r" big "$t"
    done
    for t in direct tier1 tier2; do
        # tier2: the first hits of a cold node come from the bucket; later ones from its disk.
        if [ "$t" = tier2 ]; then stop_node b; rm -rf "$W/cache-b"; start_node b "$((PORT + 1))" false; fi
        measure "$r" manifest_digest_c32 "$t"
    done
    measure "$r" small_c32 tier1
    redirect_cost "$r"
done
log "done in $((SECONDS - T0)) s"
jq -se 'map((.errors // 0)) | add == 0' "$OUTJ" >/dev/null
