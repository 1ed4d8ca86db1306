#!/usr/bin/env bash
# The content cache against direct access to the Docker Hub double, whole box, interleaved
# round by round: 1 GiB blob hits (TLS client and plain-HTTP client), the 1 GiB miss (stored
# while it streams), manifests by tag within the TTL and by digest, and peak RSS while
# serving 32 concurrent big hits. "relay" is the same ocirelay build with the cache off.
#
#   bash benches/cache.sh                      # ~4 min
#   ROUNDS=5 BIG=1073741824 bash benches/cache.sh
#
# Knobs: ROUNDS (3), DUR (3 s per timed measurement), BIG (1 GiB), PORT (18700), OUTJ (JSON
# lines), BIN (target/release/ocirelay). Prints one line per measurement, then medians of
# throughput (MB/s for blobs, req/s for manifests) and of per-round ratios to direct, and the
# cache's own counters (hits, misses: upstream fetches) per workload.
# Not here yet: nginx proxy_cache and distribution's pull-through mode as anchors.
set -euo pipefail
source "$(dirname "$0")/common.sh"
BIN=${BIN:-$ROOT/target/release/ocirelay}
[ -x "$BIN" ] || cargo build --release --bin ocirelay --manifest-path "$ROOT/Cargo.toml" >&2
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-3}
BIG=${BIG:-1073741824}
PORT=${PORT:-18700}
OUTJ=${OUTJ:-$(mktemp --suffix=.jsonl /tmp/ocirelay-cache-bench.XXXXXX)}
bench_workdir ocirelay-cache-bench
bench_certs
bench_double "$BIG"
REG_URL=$(jq -r .registry_url "$D"); TOKEN_URL=$(jq -r .token_url "$D")
SR=$(jq -r .small.repo "$D"); SM=$(jq -r .small.manifest_digest "$D"); SMS=$(jq -r .small.manifest_size "$D")
BR=$(jq -r .big.repo "$D"); BL=$(jq -r .big.layer_digest "$D"); BS=$(jq -r .big.layer_size "$D")

start_ocirelay() { # name tls_port cache(true|false)
    cat >"$W/$1.toml" <<EOT
listen = ["127.0.0.1:$(($2 + 1))"]
access_log = false
[[tls_listener]]
addr = "127.0.0.1:$2"
cert = "$W/p.pem"
key = "$W/p.key"
[[registry]]
name = "docker.io"
upstream = "$REG_URL"
ca_file = "$W/hub.pem"
[cache]
enabled = $3
dir = "$W/cache-$1"
tag_ttl = "1h"
max_size = "100GiB"
EOT
    "$BIN" --config "$W/$1.toml" >"$W/$1.log" 2>&1 &
    PIDS+=("$!")
    eval "PID_$1=$!"
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && break; sleep 0.1; done
}
start_ocirelay cache "$PORT" true
start_ocirelay relay "$((PORT + 2))" false

base_of() { # target -> URL
    case $1 in
    direct) echo "$REG_URL" ;;
    cache_tls) echo "https://127.0.0.1:$PORT" ;;
    cache_http) echo "http://127.0.0.1:$((PORT + 1))" ;;
    relay_tls) echo "https://127.0.0.1:$((PORT + 2))" ;;
    esac
}
pid_of() { case $1 in direct) echo "$DPID" ;; cache_*) echo "$PID_cache" ;; relay_*) echo "$PID_relay" ;; esac; }
counters() { "$BIN" cache stats --dir "$W/cache-cache" | sed -nE 's/.*\(([0-9]+) hits, ([0-9]+) coalesced, ([0-9]+) revalidated, ([0-9]+) stale, ([0-9]+) misses\).*/\1 \5/p'; }
measure() { # round workload target
    local r=$1 wl=$2 t=$3 base realm args=() line before after
    base=$(base_of "$t")
    if [ "$t" = direct ]; then realm=$TOKEN_URL; else realm=$base/token; fi
    args=(--base "$base" --ca "$W/ca.pem" --ca "$W/hub.pem" --expect-realm "$realm"
        --proxy-pid "$(pid_of "$t")" --label "round=$r" --label "wl=$wl" --label "target=$t")
    case $wl in
    manifest_tag_c32) args+=(--workload manifest-get --repo "$SR" --reference latest --digest "$SM" --size "$SMS" --conns 32 --duration "$DUR" --timeout 20) ;;
    manifest_digest_c32) args+=(--workload manifest-get --repo "$SR" --reference "$SM" --digest "$SM" --size "$SMS" --conns 32 --duration "$DUR" --timeout 20) ;;
    big_hit | big_miss) args+=(--workload blob --repo "$BR" --digest "$BL" --size "$BS" --conns 1 --max-requests 1 --duration 300 --timeout 60) ;;
    rss_32_hits) args+=(--workload blob --repo "$BR" --digest "$BL" --size "$BS" --conns 32 --max-requests 32 --duration 600 --timeout 120) ;;
    esac
    if [ "$wl" = big_miss ]; then # only the big blob goes: the manifests stay cached
        rm -f "$W/cache-cache/blobs/sha256/${BL:7:2}/${BL#sha256:}"
    fi
    before=$(counters)
    line=$(timeout 900 "$TOOLS/loadgen" "${args[@]}" 2>>"$W/lg.err") || line=
    sleep 2.2 # the mirror writes its counters every 2 s
    after=$(counters)
    [ -n "$line" ] || { echo "r$r $wl $t: FAILED ($(tail -n 2 "$W/lg.err"))"; return; }
    line=$(jq -c --arg b "$before" --arg a "$after" '. + {cache_hits: (($a|split(" ")[0]|tonumber) - ($b|split(" ")[0]|tonumber)), cache_misses: (($a|split(" ")[1]|tonumber) - ($b|split(" ")[1]|tonumber))}' <<<"$line" 2>/dev/null || echo "$line")
    echo "$line" >>"$OUTJ"
    jq -r '"r\(.labels.round) \(.labels.wl) \(.labels.target): \(.rps*100|floor/100) req/s \(.mbps|floor) MB/s err \(.errors) hwm \(.proxy_hwm_kb/1024|floor) MiB hits \(.cache_hits) misses \(.cache_misses)"' <<<"$line"
}
# Warm: the blob, the manifest by tag and by digest go into the cache once.
for wl in big_miss manifest_tag_c32 manifest_digest_c32; do measure 0 "$wl" cache_tls >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
    for t in direct relay_tls cache_tls cache_http; do measure "$r" manifest_tag_c32 "$t"; done
    for t in direct relay_tls cache_tls cache_http; do measure "$r" manifest_digest_c32 "$t"; done
    for t in direct cache_tls cache_http relay_tls; do measure "$r" big_hit "$t"; done
    measure "$r" big_miss cache_tls
    measure "$r" big_hit cache_tls >/dev/null # stored again for the next round
done
measure 1 rss_32_hits cache_tls
echo
echo "medians over $ROUNDS rounds (ratio: median of per-round ratios to direct):"
for wl in manifest_tag_c32 manifest_digest_c32 big_hit big_miss; do
    jq -rs --arg wl "$wl" '
        def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        def val: if ($wl | startswith("big")) then .mbps else .rps end;
        . as $all
        | [.[] | select(.labels.wl == $wl and .labels.round != "0")] as $rows
        | ($rows | map(.labels.target) | unique) as $ts
        | $ts[] as $t
        | ($rows | map(select(.labels.target == $t)) ) as $mine
        | ($mine | map(val) | med) as $m
        | ($mine | map(. as $x | ($all | map(select(.labels.wl == (if $wl == "big_miss" then "big_hit" else $wl end)) | select(.labels.target == "direct" and .labels.round == $x.labels.round)) | first) as $d
            | if $d then ($x | val) / ($d | val) else empty end) | med) as $ratio
        | ($mine | map(.cache_misses // 0) | add) as $misses
        | "\($wl) \($t): \($m * 10 | round / 10) \(if ($wl | startswith("big")) then "MB/s" else "req/s" end), \(if $ratio then ($ratio * 100 | round / 100 | tostring) + "x direct" else "-" end), upstream fetches (cache misses) \($misses)"
    ' "$OUTJ"
done
jq -r 'select(.labels.wl == "rss_32_hits") | "rss_32_hits: peak RSS \(.proxy_hwm_kb/1024|floor) MiB while serving \(.requests) concurrent hits of \(.bytes/.requests/1048576|floor) MiB, \(.mbps|floor) MB/s in all, errors \(.errors)"' "$OUTJ"
