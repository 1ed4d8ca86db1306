# Shared by benches/ab.sh and benches/cache.sh (sourced): the load tools, a
# work directory cleaned up on exit, a test CA with a certificate for
# 127.0.0.1, and the Docker Hub double. Sets ROOT, TOOLS, W, PIDS, DPID, D.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/target/benchtools/release
# Always through cargo (a no-op when up to date): stale tools would lack newer options.
cargo build --release --quiet --manifest-path "$ROOT/benches/loadgen/Cargo.toml" \
    --target-dir "$ROOT/target/benchtools" >&2
PIDS=()
DPID=
DOUBLE_ARGS=() # more benchdouble options (cache.sh: the mid-size image, the counts socket)

# bench_workdir PREFIX: a fresh W, removed (with every process started) on exit.
bench_workdir() {
    W=$(mktemp -d "/tmp/$1.XXXXXX")
    trap bench_cleanup EXIT
}

bench_cleanup() {
    set +e
    exec 7>&- 2>/dev/null
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    [ -n "$DPID" ] && { for _ in $(seq 1 30); do kill -0 $DPID 2>/dev/null || break; sleep 0.1; done; kill -KILL $DPID 2>/dev/null; }
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$W"
}

# bench_certs: $W/ca.pem, and $W/p.pem + $W/p.key for 127.0.0.1 signed by it.
bench_certs() {
    openssl ecparam -name prime256v1 -genkey -noout -out "$W/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$W/ca.key" -sha256 -days 2 -subj "/CN=t CA" -out "$W/ca.pem" 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out "$W/p.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$W/p.ec" -out "$W/p.key"
    openssl req -new -key "$W/p.key" -subj "/CN=localhost" -out "$W/p.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$W/ext"
    openssl x509 -req -in "$W/p.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 -sha256 -extfile "$W/ext" -out "$W/p.crt" 2>/dev/null
    cat "$W/p.crt" "$W/ca.pem" >"$W/p.pem"
}

# bench_double BIG [PREFIX...]: the double (run under PREFIX, e.g. taskset), with
# a BIG-byte blob; its description in $D, its CA in $W/hub.pem. It runs until
# fd 7 (its stdin) closes.
bench_double() {
    local big=$1
    shift
    mkfifo "$W/d.in"
    "$@" "$TOOLS/benchdouble" --big-size "$big" "${DOUBLE_ARGS[@]}" <"$W/d.in" >"$W/d.json" 2>"$W/d.err" &
    DPID=$!
    exec 7>"$W/d.in"
    for _ in $(seq 1 600); do [ -s "$W/d.json" ] && break; sleep 0.1; done
    D=$W/d.json
    cp "$(jq -r .ca_pem_path "$D")" "$W/hub.pem"
}
