#!/usr/bin/env bash
# A/B of ocirelay builds, per-core view: each binary (workers = 1, TLS on both sides, digest
# checks on) pinned to core 0, the Docker Hub double and the load generator on core 1;
# workloads interleaved round by round, the binaries' order rotating every round. For
# deciding whether a change helps before a full `benches/run.sh`; only ratios from the same
# run mean anything on a shared machine.
#
#   cp target/release/ocirelay /tmp/ocirelay-base     # before the change
#   BINS="base:/tmp/ocirelay-base new:target/release/ocirelay" ROUNDS=5 \
#       WL="manifest_get_c64 token_c16 blob1m_c32 blob1g_c1" bash benches/ab.sh
#
# Knobs: EXTRA_<name> (config text for binary <name> only, e.g. a [client_limits] table),
# ROUNDS (5), DUR (2.5 s per timed measurement), BIG (size of the big blob, 256 MiB),
# WL (workloads: manifest_get_c1/c64/c256 cold_c16 token_c16 blob1m_c32 blob1g_c1), PORT
# (18600: two ports per binary), OUTJ (JSON lines, appended), PERF (seconds of `perf stat`
# per measurement, events in PERFEV). Prints one line per measurement, then per workload the
# median CPU per request (or per GiB for blobs) of each binary and its median ratio to the
# first binary, round by round.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-2.5}
BIG=${BIG:-268435456}
WL=${WL:-"manifest_get_c64 token_c16"}
PORT=${PORT:-18600}
OUTJ=${OUTJ:-$(mktemp --suffix=.jsonl /tmp/ocirelay-ab.XXXXXX)}
bench_workdir ocirelay-ab
bench_certs
bench_double "$BIG" taskset -c 1
declare -A BPID BPORT
i=0
for spec in $BINS; do
    name=${spec%%:*}; bin=${spec#*:}
    port=$((PORT + 2 * i)); i=$((i + 1))
    # These workloads measure relaying: the cache off, for builds that have one.
    NOCACHE=
    if "$bin" config default 2>/dev/null | grep -q '^\[cache\]'; then
        NOCACHE=$'[cache]\nenabled = false'
    fi
    cat >"$W/$name.toml" <<EOF
listen = ["127.0.0.1:$((port + 1))"]
workers = 1
access_log = false
[[tls_listener]]
addr = "127.0.0.1:$port"
cert = "$W/p.pem"
key = "$W/p.key"
[limits]
verify_digests = true
$NOCACHE
$(v="EXTRA_$name"; printf '%s' "${!v:-}")
[[registry]]
name = "docker.io"
upstream = "$(jq -r .registry_url "$D")"
ca_file = "$W/hub.pem"
EOF
    taskset -c 0 env ${ENVS:-} "$bin" --config "$W/$name.toml" >"$W/$name.log" 2>&1 &
    BPID[$name]=$!
    BPORT[$name]=$port
    PIDS+=("$!")
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    head -2 "$W/$name.log" >&2
done
SR=$(jq -r .small.repo "$D"); SM=$(jq -r .small.manifest_digest "$D"); SMS=$(jq -r .small.manifest_size "$D")
SL=$(jq -r .small.layer_digest "$D"); SS=$(jq -r .small.layer_size "$D")
BR=$(jq -r .big.repo "$D"); BL=$(jq -r .big.layer_digest "$D"); BS=$(jq -r .big.layer_size "$D")
lg() { # name args...
    local name=$1; shift
    local B=https://127.0.0.1:${BPORT[$name]}
    timeout 400 taskset -c 1 "$TOOLS/loadgen" --base "$B" --ca "$W/ca.pem" --ca "$W/hub.pem" --expect-realm "$B/token" \
        --proxy-pid "${BPID[$name]}" --upstream-pid "$DPID" "$@" 2>>"$W/lg.err"
}
names=()
for spec in $BINS; do names+=("${spec%%:*}"); done
# warm-up
for n in "${names[@]}"; do
    lg "$n" --workload manifest-get --repo "$SR" --digest "$SM" --conns 16 --duration 0.5 >/dev/null || true
    lg "$n" --workload blob --repo "$SR" --digest "$SL" --size "$SS" --conns 8 --duration 0.5 >/dev/null || true
done
busy() { awk '/^cpu /{print $2+$3+$4; exit}' /proc/stat; }
quiet() { local s=$SECONDS a b; while :; do a=$(busy); sleep 0.2; b=$(busy); [ $(( (b-a)*5 )) -lt 10 ] && break; [ $((SECONDS-s)) -ge 10 ] && break; sleep 0.5; done; }
for r in $(seq 1 "$ROUNDS"); do
    for wl in $WL; do
        k=$(( (r - 1) % ${#names[@]} ))
        order=("${names[@]:$k}" "${names[@]:0:$k}")
        for n in "${order[@]}"; do
            quiet
            case $wl in
            manifest_get_c64) args=(--workload manifest-get --repo "$SR" --digest "$SM" --size "$SMS" --conns 64 --duration "$DUR" --timeout 20) ;;
            manifest_get_c256) args=(--workload manifest-get --repo "$SR" --digest "$SM" --size "$SMS" --conns 256 --duration "$DUR" --timeout 20) ;;
            manifest_get_c1) args=(--workload manifest-get --repo "$SR" --digest "$SM" --size "$SMS" --conns 1 --duration "$DUR" --timeout 20) ;;
            cold_c16) args=(--workload cold --repo "$SR" --digest "$SM" --size "$SMS" --conns 16 --duration "$DUR" --timeout 20) ;;
            token_c16) args=(--workload token --repo "$SR" --conns 16 --duration "$DUR" --timeout 20) ;;
            blob1m_c32) args=(--workload blob --repo "$SR" --digest "$SL" --size "$SS" --conns 32 --duration "$DUR" --timeout 20) ;;
            blob1g_c1) args=(--workload blob --repo "$BR" --digest "$BL" --size "$BS" --conns 1 --max-requests 1 --duration 300 --timeout 60) ;;
            esac
            if [ -n "${PERF:-}" ]; then
                timeout 60 perf stat -x, -e ${PERFEV:-page-faults} -p "${BPID[$n]}" -o "$W/perf.txt" -- sleep "${PERF}" >/dev/null 2>&1 &
                pp=$!
                sleep 0.2
            fi
            line=$(lg "$n" "${args[@]}" --label "bin=$n" --label "wl=$wl" --label "round=$r") || line=
            if [ -n "${PERF:-}" ]; then wait $pp || true; echo "  perf $n: $(grep -v '^#' "$W/perf.txt" | grep -v '^$' | cut -d, -f1,3 | tr '\n' ' ')"; fi
            [ -n "$line" ] && echo "$line" >>"$OUTJ"
            echo "$line" | jq -r '"r\(.labels.round) \(.labels.wl) \(.labels.bin): \(.rps|floor) req/s cpu/req \((.proxy_cpu_s/(.requests // 1))*1e6|floor) us other_cpu \(.other_cpu_s) err \(.errors) rss_before \(.proxy_rss_before_kb/1024|floor) hwm \(.proxy_hwm_kb/1024|floor)"' 2>/dev/null || echo "r$r $wl $n: FAILED"
        done
    done
done
# Summary: medians over rounds, and the median of per-round ratios to the first binary.
first=${names[0]}
for wl in $WL; do
    jq -rs --arg wl "$wl" --arg first "$first" '
        def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        def cost: if ($wl | startswith("blob")) then .proxy_cpu_s / ((.bytes // 1) / 1073741824)
                  else .proxy_cpu_s / ((.requests // 1) | if . == 0 then 1 else . end) * 1e6 end;
        [.[] | select(.labels.wl == $wl)] as $rows
        | ($rows | map(.labels.bin) | unique) as $bins
        | $bins[] as $b
        | ($rows | map(select(.labels.bin == $b) | cost) | med) as $m
        | ($rows | map(select(.labels.bin == $b)) | map(. as $r
            | ($rows | map(select(.labels.bin == $first and .labels.round == $r.labels.round)) | first) as $f
            | if $f then ($r | cost) / ($f | cost) else empty end) | med) as $ratio
        | "\($wl) \($b): median \($m * 1000 | round / 1000) \(if ($wl | startswith("blob")) then "CPU-s/GiB" else "CPU-us/request" end), \($ratio * 1000 | round / 1000)x \($first)"
    ' "$OUTJ" 2>/dev/null || true
done
