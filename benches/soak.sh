#!/usr/bin/env bash
# Soak: ocirelay with the cache on against the Docker Hub double under a mixed load
# (benches/loadgen/src/bin/soakload.rs: manifests by tag and digest, small and big blobs,
# cache hits and misses with new digests arriving all the time, ranges, downloads cancelled
# mid-body), sampling the relay's RSS and open file descriptors every SAMPLE seconds into a
# CSV, then printing start / max / end after warm-up and whether they stayed flat.
#
#   bash benches/soak.sh                         # 30 minutes
#   DURATION=75 WARMUP=20 bash benches/soak.sh   # the short version tests/run-all.sh runs
#
# Knobs: DURATION (1800 s), WARMUP (120 s: samples before it set the baseline only), SAMPLE
# (5 s), THREADS (4 clients), BIG (16 MiB), CACHE_MAX (64MiB: eviction runs during the
# soak), PORT (18900), BIN (target/release/ocirelay), OUT (the CSV; default in /tmp, kept),
# RSS_GROWTH_KIB (8192) and FD_GROWTH (16): the bounds on growth from the first sample after
# warm-up to the highest of the last quarter. Exit status 1 when a response was wrong or a
# bound was passed. Loopback only; everything it starts is stopped by its PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-1800}
WARMUP=${WARMUP:-120}
SAMPLE=${SAMPLE:-5}
THREADS=${THREADS:-4}
BIG=${BIG:-16777216}
CACHE_MAX=${CACHE_MAX:-64MiB}
PORT=${PORT:-18900}
BIN=${BIN:-$ROOT/target/release/ocirelay}
RSS_GROWTH_KIB=${RSS_GROWTH_KIB:-8192}
FD_GROWTH=${FD_GROWTH:-16}
OUT=${OUT:-$(mktemp --suffix=.csv /tmp/ocirelay-soak.XXXXXX)}
[ "$WARMUP" -lt "$DURATION" ] || { echo "soak: WARMUP must be below DURATION" >&2; exit 2; }

cargo build --release --quiet --manifest-path "$ROOT/benches/loadgen/Cargo.toml" \
    --target-dir "$ROOT/target/benchtools" --bin soakload >&2
[ -x "$BIN" ] || cargo build --release --quiet --bin ocirelay >&2

W=$(mktemp -d /tmp/ocirelay-soak.XXXXXX)
LPID= RPID=
cleanup() {
    set +e
    for p in $LPID $RPID; do kill -TERM "$p" 2>/dev/null; done
    for p in $LPID $RPID; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    rm -rf "$W"
}
trap cleanup EXIT

# The load (and the double inside it) first: the relay's config needs the double's URL.
"$ROOT/target/benchtools/release/soakload" --info "$W/double.json" --relay "127.0.0.1:$PORT" \
    --duration "$DURATION" --threads "$THREADS" --big-size "$BIG" \
    >"$W/load.json" 2>"$W/load.err" &
LPID=$!
for _ in $(seq 1 600); do [ -s "$W/double.json" ] && break; sleep 0.1; done
[ -s "$W/double.json" ] || { cat "$W/load.err" >&2; exit 1; }
cat >"$W/relay.toml" <<EOF
listen = ["127.0.0.1:$PORT"]
workers = 2
access_log = false
metrics_listen = "off"
[cache]
enabled = true
dir = "$W/cache"
max_size = "$CACHE_MAX"
[[registry]]
name = "docker.io"
upstream = "$(jq -r .registry_url "$W/double.json")"
ca_file = "$(jq -r .ca_pem_path "$W/double.json")"
EOF
"$BIN" --config "$W/relay.toml" >"$W/relay.log" 2>&1 &
RPID=$!

echo "secs,rss_kib,fds" >"$OUT"
start=$(date +%s)
while kill -0 "$LPID" 2>/dev/null; do
    kill -0 "$RPID" 2>/dev/null || { echo "soak: the relay died" >&2; tail -20 "$W/relay.log" >&2; exit 1; }
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$RPID/status" 2>/dev/null || echo 0)
    fds=$(find "/proc/$RPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ "${rss:-0}" -gt 0 ] && echo "$(( $(date +%s) - start )),$rss,$fds" >>"$OUT"
    # Sleep in small steps, so that the end of the load ends the sampling promptly.
    for _ in $(seq 1 $((SAMPLE * 10))); do kill -0 "$LPID" 2>/dev/null || break; sleep 0.1; done
    [ $(( $(date +%s) - start )) -gt $((DURATION + 120)) ] && { echo "soak: the load overran" >&2; exit 1; }
done
status=0
wait "$LPID" || status=$?
echo "load: $(cat "$W/load.json")"
[ "$status" = 0 ] || { echo "soak: wrong responses:" >&2; head -5 "$W/load.err" >&2; }

# Start (first sample after warm-up), max, end; growth = highest of the last quarter minus
# the start: memory that keeps climbing shows there, a one-off peak mid-run does not.
awk -F, -v warm="$WARMUP" -v rg="$RSS_GROWTH_KIB" -v fg="$FD_GROWTH" '
    BEGIN { n = 0 }
    NR > 1 { t[n] = $1; r[n] = $2; f[n] = $3; n++ }
    END {
        for (i = 0; i < n && t[i] < warm; i++) {}
        if (i >= n) { print "soak: no samples after warm-up"; exit 1 }
        s = i; q = s + int((n - s) * 3 / 4); if (q >= n) q = n - 1
        rmax = 0; fmax = 0; rlast = 0; flast = 0
        for (j = s; j < n; j++) { if (r[j] > rmax) rmax = r[j]; if (f[j] > fmax) fmax = f[j] }
        for (j = q; j < n; j++) { if (r[j] > rlast) rlast = r[j]; if (f[j] > flast) flast = f[j] }
        printf "samples %d (%d after %ds warm-up), every ~%ds\n", n, n - s, warm, (n > 1 ? t[n-1] / (n - 1) : 0)
        printf "rss_kib start %d max %d end %d (last quarter max %d, growth %d, bound %d)\n", r[s], rmax, r[n-1], rlast, rlast - r[s], rg
        printf "fds     start %d max %d end %d (last quarter max %d, growth %d, bound %d)\n", f[s], fmax, f[n-1], flast, flast - f[s], fg
        printf "table (secs rss_kib fds), ten points:\n"
        for (k = 0; k < 10; k++) { j = int(k * (n - 1) / 9); printf "  %6d %8d %5d\n", t[j], r[j], f[j] }
        flat = (rlast - r[s] <= rg) && (flast - f[s] <= fg)
        print (flat ? "flat: yes" : "flat: NO")
        exit(flat ? 0 : 1)
    }' "$OUT" || status=1
echo "csv: $OUT"
exit "$status"
