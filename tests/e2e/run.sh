#!/usr/bin/env bash
# End-to-end test of ocirelay against real registry software, all on loopback.
#
#   upstream "Docker Hub", built from real parts:
#     https://127.0.0.11:P_REG   nginx (TLS) -> docker-registry 2.8 (auth: token) on 127.0.0.14
#                                blob GETs answered by a 307 to a signed, expiring CDN URL
#     https://127.0.0.12:P_AUTH  regtoken: JWT token server (GET + OAuth2 POST /token)
#     https://127.0.0.13:P_CDN   nginx (TLS) serving the registry's blob files, secure_link,
#                                400 on any Authorization header (like Cloudflare R2)
#   upstream "ghcr.io", a second registry with its own CA, token service, signing root,
#   storage and CDN (one nginx process, two server blocks):
#     https://127.0.0.31:P_GREG  nginx (TLS) -> docker-registry 2.8 (auth: token) on 127.0.0.34
#     https://127.0.0.32:P_GAUTH regtoken, service "ghcr.io"
#     https://127.0.0.33:P_GCDN  nginx (TLS) signed blob URLs
#   under test:
#     http://127.0.0.1:P_RELAY, https://127.0.0.1:P_RELAYTLS   ocirelay (docker.io by default,
#                                ghcr.io by path prefix /v2/ghcr.io/... or containerd's ?ns=)
#     http://127.0.0.21:P_RELAY, https://127.0.0.21:P_RELAYTLS the same ocirelay: host route
#                                to ghcr.io (`hosts = ["127.0.0.21"]`)
#     http://127.0.0.1:P_RELAYPROXY, https://127.0.0.1:P_RELAYPROXYTLS the same ocirelay's
#                                PROXY protocol listeners, trusting only 127.0.0.43
#   a load balancer: HAProxy on 127.0.0.41 (P_LB plain, sending PROXY v1; P_LBTLS passing
#                                TLS through, sending PROXY v2), connecting from 127.0.0.43
#   clients: curl, skopeo, podman, containerd (ctr)
#
# Env: OCIRELAY_BIN (default target/release/ocirelay, built if missing),
#      E2E_BIG_MB (size of the big layer, default 200), E2E_CDN_TTL (seconds a signed CDN
#      URL lives, default 20), E2E_KEEP=1 (keep the work directory even on success),
#      E2E_UPSTREAM_ONLY=1 (check only the upstream harness, no ocirelay).
# Prints PASS/FAIL per check and finally "N passed, M failed"; exits 1 if any failed.
# shellcheck disable=SC2153,SC2317  # ports are assigned by pick_port; traps call functions
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
# shellcheck source=oci.sh
source "$HERE/oci.sh"

OCIRELAY_BIN=${OCIRELAY_BIN:-target/release/ocirelay}
BIG_MB=${E2E_BIG_MB:-200}
CDN_TTL=${E2E_CDN_TTL:-20}
KEEP=${E2E_KEEP:-0}
UPSTREAM_ONLY=${E2E_UPSTREAM_ONLY:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

IP_REG=127.0.0.11
IP_AUTH=127.0.0.12
IP_CDN=127.0.0.13
IP_BACK=127.0.0.14
IP_RELAY=127.0.0.1
SERVICE=registry.docker.io
ISSUER=e2e-auth
USER_NAME=alice
USER_PASS=wonderland
# the ghcr-like registry
IP_GREG=127.0.0.31
IP_GAUTH=127.0.0.32
IP_GCDN=127.0.0.33
IP_GBACK=127.0.0.34
IP_RELAY2=127.0.0.21 # ocirelay's host route to ghcr.io
IP_LB=127.0.0.41     # HAProxy's frontends
IP_CLIENT=127.0.0.42 # a client behind the load balancer (curl --interface)
IP_LBOUT=127.0.0.43  # HAProxy's source address toward ocirelay: the trusted proxy
GSERVICE=ghcr.io
GISSUER=e2e-ghcr-auth
# alice/wonderland is valid on both upstreams (one login per mirror host covers its path
# prefixes); octo only on the ghcr-like one, so a login with it proves where it went.
GUSER_NAME=octo
GUSER_PASS=cat-in-a-box

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocirelay-e2e.XXXXXX")
LOGS=$WORK/logs
CERTS=$WORK/certs
mkdir -p "$LOGS"

T0=$(date +%s)
say() { printf '[e2e %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
NPASS=0
NFAIL=0
die() {
    printf '\n!!! E2E HARNESS ERROR: %s\n' "$*" >&2
    if ((BASH_SUBSHELL == 0)); then
        echo "FAIL harness: $*"
        echo "$NPASS passed, $((NFAIL + 1)) failed"
    fi
    exit 1
}

# ---------------------------------------------------------------- processes

PROCS=() # "name pid", in start order
start() {
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    PROCS+=("$name $!")
    say "started $name (pid $!): $*"
}

pid_of() {
    local e n p
    for e in "${PROCS[@]}"; do
        read -r n p <<<"$e"
        [[ $n == "$1" ]] && echo "$p" && return 0
    done
    return 1
}

stop() { # stop NAME: TERM, bounded wait, KILL
    local pid i
    pid=$(pid_of "$1") || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$1 (pid $pid) ignored SIGTERM for 5s, killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
}

alive() {
    local pid
    pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null
}

kill_tree() { # kill_tree PID: the process and its descendants, children first
    local c
    for c in $(pgrep -P "$1" 2>/dev/null); do
        kill_tree "$c"
    done
    kill -TERM "$1" 2>/dev/null || true
}

CHECK_PID=
cleanup() {
    local rc=$? i n p
    trap - EXIT INT TERM HUP
    if [[ -n $CHECK_PID ]] && kill -0 "$CHECK_PID" 2>/dev/null; then
        kill_tree "$CHECK_PID"
    fi
    for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do
        read -r n p <<<"${PROCS[i]}"
        stop "$n"
    done
    if [[ $KEEP == 1 || $rc != 0 ]]; then
        echo "e2e: work directory kept: $WORK (logs in $LOGS)" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_tcp NAME IP PORT SECS: until something accepts on IP:PORT; NAME must stay alive.
wait_tcp() {
    local name=$1 ip=$2 port=$3 secs=$4 i
    for ((i = 0; i < secs * 5; i++)); do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null; then
            return 0
        fi
        if ! alive "$name"; then
            tail -n 30 "$LOGS/$name.log" >&2 || true
            die "$name exited before listening on $ip:$port (log: $LOGS/$name.log)"
        fi
        sleep 0.2
    done
    tail -n 30 "$LOGS/$name.log" >&2 || true
    die "$name did not listen on $ip:$port within ${secs}s"
}

USED_PORTS=" "
pick_port() { # pick_port VAR
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! ss -Hltn "( sport = :$p )" | grep -q .; then
            USED_PORTS+="$p "
            printf -v "$1" %s "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}

# ---------------------------------------------------------------- checks

NCHECK=0
# check NAME CMD...: runs CMD in a subshell with errexit (in the background so that
# errexit stays on inside functions), its output in a per-check log.
check() {
    local name=$1 log t0=$SECONDS
    shift
    NCHECK=$((NCHECK + 1))
    log=$LOGS/check-$(printf %02d "$NCHECK")-${name//[^A-Za-z0-9._-]/_}.log
    (
        set -euo pipefail
        "$@"
    ) >"$log" 2>&1 </dev/null &
    CHECK_PID=$!
    if wait "$CHECK_PID"; then
        NPASS=$((NPASS + 1))
        echo "PASS $name   ($((SECONDS - t0))s)"
    else
        NFAIL=$((NFAIL + 1))
        echo "FAIL $name   ($((SECONDS - t0))s, log: $log)"
        tail -n 40 "$log" | sed 's/^/    | /'
    fi
}

fail() {
    echo "ASSERTION FAILED: $*" >&2
    return 1
}

# expect_eq WHAT GOT WANT
expect_eq() {
    if [[ $2 != "$3" ]]; then
        fail "$1: got '$2', want '$3'"
    fi
    echo "ok: $1 = $2"
}

summary_and_exit() {
    say "done in $(($(date +%s) - T0))s"
    echo "$NPASS passed, $NFAIL failed"
    if ((NFAIL > 0)); then
        exit 1
    fi
    exit 0
}

# ---------------------------------------------------------------- client wrappers

SK_TIMEOUT=600
sk() {
    HOME=$WORK/home REGISTRY_AUTH_FILE=$WORK/containers/auth.json timeout -k 5 "$SK_TIMEOUT" skopeo --policy "$WORK/containers/policy.json" \
        --registries-conf "$WORK/containers/registries.conf" "$@"
}
pm() {
    HOME=$WORK/home REGISTRY_AUTH_FILE=$WORK/containers/auth.json timeout -k 5 300 podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" \
        --tmpdir "$WORK/podman/tmp" --storage-driver vfs --cgroup-manager cgroupfs \
        --events-backend file "$@"
}
ct() {
    timeout -k 5 300 ctr --address "$WORK/containerd/containerd.sock" --namespace e2e "$@"
}
# cu ARGS: curl with both test CAs, bounded, verbose to stderr.
cu() {
    timeout -k 5 120 curl --silent --show-error --cacert "$CERTS/cas.pem" --noproxy '*' \
        --max-time 110 "$@"
}

ACCEPT=(-H 'Accept: application/vnd.oci.image.index.v1+json' -H 'Accept: application/vnd.oci.image.manifest.v1+json'
    -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')

# ---------------------------------------------------------------- expectations

declare -A EXP_TOP     # image -> top manifest (or index) digest
declare -A EXP_HOST    # image -> the linux/amd64 manifest digest (= EXP_TOP for single images)
declare -A EXP_CONFIG  # image -> linux/amd64 config digest
declare -A EXP_BLOBS   # image -> space separated hex of every blob (configs, layers)
declare -A EXP_CHILD   # image -> space separated hex of child manifests (indexes only)
declare -A EXP_LAYER   # image -> digest of the first layer of the amd64 image
declare -A IMG_REPO    # image -> repository on the upstream
declare -A IMG_TAG     # image -> its tag there (default latest)
IMG_REPO=([small]=library/small [multi]=library/multi [big]=library/big
    [secret]=private/secret [late]=library/late
    [gtool]=owner/tool [gmulti]=owner/multi [gprivate]=owner/private)
IMG_TAG=([gtool]=1.0 [gprivate]=1)
HUB_IMAGES="small secret late big multi"
GHCR_IMAGES="gtool gmulti gprivate" # on the ghcr-like registry

# verify_dir IMAGE DIR [host]: a skopeo dir: copy holds exactly the expected content.
# With "host", the copy was of the amd64 image only (skopeo without --all picks it).
verify_dir() {
    local img=$1 dir=$2 mode=${3:-top} want_top got hex f n=0
    if [[ $mode == host ]]; then want_top=${EXP_HOST[$img]}; else want_top=${EXP_TOP[$img]}; fi
    got=sha256:$(sha256sum "$dir/manifest.json" | cut -d' ' -f1)
    expect_eq "$img manifest digest" "$got" "$want_top"
    if [[ $mode == top ]]; then
        for hex in ${EXP_CHILD[$img]}; do
            f=$dir/$hex.manifest.json
            [[ -f $f ]] || fail "missing child manifest $hex"
            expect_eq "child manifest" "$(sha256sum "$f" | cut -d' ' -f1)" "$hex"
        done
    fi
    local want_blobs=${EXP_BLOBS[$img]}
    if [[ $mode == host ]]; then
        want_blobs=$(jq -r '.config.digest, .layers[].digest' "$dir/manifest.json" | sed 's/^sha256://')
    fi
    for hex in $want_blobs; do
        f=$dir/$hex
        [[ -f $f ]] || fail "blob $hex missing from $dir"
        got=$(sha256sum "$f" | cut -d' ' -f1)
        expect_eq "blob sha256 ($(stat -c %s "$f") bytes)" "$got" "$hex"
        n=$((n + 1))
    done
    echo "verified $n blobs of $img in $dir"
}

# ---------------------------------------------------------------- setup

say "work directory: $WORK"
for tool in docker-registry nginx haproxy skopeo podman containerd ctr curl jq tar gzip sha256sum ss timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (see tests/e2e/README.md)"
done

say "building regtoken"
cargo build -p regtoken --quiet 2>"$LOGS/build-regtoken.log" ||
    { cat "$LOGS/build-regtoken.log" >&2; die "cargo build -p regtoken failed"; }
REGTOKEN=$TARGET_DIR/debug/regtoken

pick_port P_REG
pick_port P_AUTH
pick_port P_SIGN
pick_port P_CDN
pick_port P_BACK
pick_port P_RELAY
pick_port P_RELAYTLS
pick_port P_RELAYPROXY
pick_port P_RELAYPROXYTLS
pick_port P_LB
pick_port P_LBTLS
pick_port P_GREG
pick_port P_GAUTH
pick_port P_GSIGN
pick_port P_GCDN
pick_port P_GBACK
pick_port P_GCLOSED # nothing ever listens here: the "blocked" upstream in registries.conf
REG=$IP_REG:$P_REG
RELAY=$IP_RELAY:$P_RELAY
RELAYTLS=$IP_RELAY:$P_RELAYTLS
RELAYPROXY=$IP_RELAY:$P_RELAYPROXY
RELAYPROXYTLS=$IP_RELAY:$P_RELAYPROXYTLS
LB=$IP_LB:$P_LB
LBTLS=$IP_LB:$P_LBTLS
GREG=$IP_GREG:$P_GREG
RELAY2=$IP_RELAY2:$P_RELAY
RELAY2TLS=$IP_RELAY2:$P_RELAYTLS
CDN_SECRET=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
GCDN_SECRET=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')

say "generating certificates"
"$REGTOKEN" gen-certs "$CERTS" "registry=$IP_REG" "auth=$IP_AUTH" "cdn=$IP_CDN" \
    "relay=$IP_RELAY,$IP_RELAY2,$IP_LB,localhost" || die "regtoken gen-certs failed"
# the ghcr-like upstream: its own TLS CA and its own token signing root
"$REGTOKEN" gen-certs "$CERTS/ghcr" "registry=$IP_GREG" "auth=$IP_GAUTH" "cdn=$IP_GCDN" ||
    die "regtoken gen-certs (ghcr) failed"
cat "$CERTS/ca.pem" "$CERTS/ghcr/ca.pem" >"$CERTS/cas.pem"
mkdir -p "$WORK/out" "$WORK/certs.d" "$WORK/certs.d-ghcr" "$WORK/home" "$WORK/containers" \
    "$WORK/podman"/{root,run,tmp}
cp "$CERTS/ca.pem" "$WORK/certs.d/ca.crt"
cp "$CERTS/ghcr/ca.pem" "$WORK/certs.d-ghcr/ca.crt"
echo '{}' >"$WORK/containers/auth.json"
cat >"$WORK/containers/policy.json" <<'EOF'
{"default":[{"type":"insecureAcceptAnything"}]}
EOF
cat >"$WORK/containers/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
cat >"$WORK/containers/containers.conf" <<'EOF'
[engine]
events_logger = "file"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_REGISTRIES_CONF=$WORK/containers/registries.conf
export CONTAINERS_CONF=$WORK/containers/containers.conf
# (REGISTRY_AUTH_FILE is set per skopeo/podman call: docker-registry would read it as
# its own REGISTRY_AUTH_* configuration override.)
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY='*'

# ---- regtoken
start regtoken "$REGTOKEN" serve --addr "$IP_AUTH:$P_AUTH" \
    --cert "$CERTS/auth-fullchain.pem" --key "$CERTS/auth-key.pem" --signing-dir "$CERTS" \
    --issuer "$ISSUER" --service "$SERVICE" --user "$USER_NAME:$USER_PASS" \
    --internal-addr "$IP_AUTH:$P_SIGN" --cdn-secret "$CDN_SECRET" --cdn-ttl "$CDN_TTL"
start regtoken-ghcr "$REGTOKEN" serve --addr "$IP_GAUTH:$P_GAUTH" \
    --cert "$CERTS/ghcr/auth-fullchain.pem" --key "$CERTS/ghcr/auth-key.pem" \
    --signing-dir "$CERTS/ghcr" --issuer "$GISSUER" --service "$GSERVICE" \
    --user "$GUSER_NAME:$GUSER_PASS" --user "$USER_NAME:$USER_PASS" --private owner/private \
    --internal-addr "$IP_GAUTH:$P_GSIGN" --cdn-secret "$GCDN_SECRET" --cdn-ttl "$CDN_TTL"
wait_tcp regtoken "$IP_AUTH" "$P_AUTH" 15
wait_tcp regtoken "$IP_AUTH" "$P_SIGN" 5
wait_tcp regtoken-ghcr "$IP_GAUTH" "$P_GAUTH" 15
wait_tcp regtoken-ghcr "$IP_GAUTH" "$P_GSIGN" 5

# ---- docker-registry (plain HTTP on its own loopback address, reached only via nginx)
# registry_conf DIR BACK_ADDR PUBLIC_HOST CDN_BASE SECRET REALM SERVICE ISSUER ROOT_BUNDLE
registry_conf() {
    mkdir -p "$1/data"
    cat >"$1/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
  redirect:
    disable: false
middleware:
  storage:
    - name: redirect
      options:
        baseurl: $4
http:
  addr: $2
  host: https://$3
  secret: e2e-$5
auth:
  token:
    realm: $6
    service: $7
    issuer: $8
    rootcertbundle: $9
EOF
}
registry_conf "$WORK/registry" "$IP_BACK:$P_BACK" "$REG" "https://$IP_CDN:$P_CDN" "$CDN_SECRET" \
    "https://$IP_AUTH:$P_AUTH/token" "$SERVICE" "$ISSUER" "$CERTS/token-root.pem"
start docker-registry docker-registry serve "$WORK/registry/config.yml"
# the ghcr-like one: own storage, own token service and signing root, own CDN
registry_conf "$WORK/registry-ghcr" "$IP_GBACK:$P_GBACK" "$GREG" "https://$IP_GCDN:$P_GCDN" \
    "$GCDN_SECRET" "https://$IP_GAUTH:$P_GAUTH/token" "$GSERVICE" "$GISSUER" "$CERTS/ghcr/token-root.pem"
start docker-registry-ghcr docker-registry serve "$WORK/registry-ghcr/config.yml"
wait_tcp docker-registry "$IP_BACK" "$P_BACK" 20
wait_tcp docker-registry-ghcr "$IP_GBACK" "$P_GBACK" 20

# ---- nginx: the registry host, the CDN host, and both hosts of the ghcr-like registry
nginx_conf() { # nginx_conf NAME SERVER_BLOCK
    local d=$WORK/nginx-$1
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
user root root;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log info;
events { worker_connections 1024; }
http {
    map \$http_authorization \$auth_scheme {
        "" "-";
        "~^(?<authscheme>[A-Za-z]+)" \$authscheme;
    }
    log_format e2e '\$remote_addr "\$request" \$status \$body_bytes_sent '
                   'range="\$http_range" auth=\$auth_scheme '
                   'loc="\$sent_http_location" rt=\$request_time';
    access_log $d/access.log e2e;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    sendfile on;
    keepalive_timeout 65s;
    default_type application/octet-stream;
    ssl_protocols TLSv1.2 TLSv1.3;
$2
}
EOF
}

# registry_server UPSTREAM_NAME BACK_ADDR LISTEN CERT_PREFIX SIGN_ADDR [DIRECTIVES]:
# the TLS front of a distribution registry.
registry_server() {
    cat <<EOF
    upstream $1 {
        server $2;
        keepalive 16;
    }
    server {
        listen $3 ssl;
        ssl_certificate $4-fullchain.pem;
        ssl_certificate_key $4-key.pem;
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-For \$remote_addr;
        proxy_set_header Connection "";
        ${6:-}

        location / {
            proxy_pass http://$1;
        }
        # Blob downloads: the registry answers 307 to the CDN; regtoken signs that URL
        # (nginx secure_link: md5 + expires), like Docker Hub's expiring CDN links.
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{64}\$" {
            proxy_pass http://$1;
            proxy_intercept_errors on;
            error_page 307 = @sign;
        }
        location @sign {
            set \$blob_location \$upstream_http_location;
            rewrite ^ /sign break;
            proxy_pass http://$5;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Location \$blob_location;
            proxy_set_header Authorization "";
            add_header Docker-Distribution-Api-Version registry/2.0 always;
        }
    }
EOF
}

# cdn_server LISTEN CERT_PREFIX ROOT SECRET [DIRECTIVES]: signed, expiring blob URLs.
cdn_server() {
    cat <<EOF
    server {
        listen $1 ssl;
        ssl_certificate $2-fullchain.pem;
        ssl_certificate_key $2-key.pem;
        root $3;
        ${5:-}

        location /docker/registry/v2/blobs/ {
            if (\$http_authorization) {
                return 400 '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code><Message>Authorization header is not allowed on a presigned URL</Message></Error>\n';
            }
            secure_link \$arg_md5,\$arg_expires;
            secure_link_md5 "\$secure_link_expires\$uri $4";
            if (\$secure_link = "") {
                return 403 'signature does not match\n';
            }
            if (\$secure_link = "0") {
                return 410 'signed URL expired\n';
            }
            add_header Cache-Control 'public, max-age=1209600' always;
        }
        location / {
            return 404 'not found\n';
        }
    }
EOF
}

nginx_conf registry "$(registry_server distribution "$IP_BACK:$P_BACK" "$REG" "$CERTS/registry" \
    "$IP_AUTH:$P_SIGN")"
nginx_conf cdn "$(cdn_server "$IP_CDN:$P_CDN" "$CERTS/cdn" "$WORK/registry/data" "$CDN_SECRET")"
# ghcr-like: one nginx process, its registry and CDN hosts as two server blocks
GHCR_REG_LOG=$WORK/nginx-ghcr/registry-access.log
GHCR_CDN_LOG=$WORK/nginx-ghcr/cdn-access.log
nginx_conf ghcr "$(registry_server distribution_ghcr "$IP_GBACK:$P_GBACK" "$GREG" \
    "$CERTS/ghcr/registry" "$IP_GAUTH:$P_GSIGN" "access_log $GHCR_REG_LOG e2e;")
$(cdn_server "$IP_GCDN:$P_GCDN" "$CERTS/ghcr/cdn" "$WORK/registry-ghcr/data" "$GCDN_SECRET" \
        "access_log $GHCR_CDN_LOG e2e;")"

for n in registry cdn ghcr; do
    nginx -t -q -p "$WORK/nginx-$n" -c "$WORK/nginx-$n/nginx.conf" -e "$WORK/nginx-$n/error.log" \
        >"$LOGS/nginx-$n-test.log" 2>&1 ||
        { cat "$LOGS/nginx-$n-test.log" "$WORK/nginx-$n/error.log" >&2; die "nginx-$n config invalid"; }
    start "nginx-$n" nginx -p "$WORK/nginx-$n" -c "$WORK/nginx-$n/nginx.conf" \
        -e "$WORK/nginx-$n/error.log" -g 'daemon off;'
done
wait_tcp nginx-registry "$IP_REG" "$P_REG" 15
wait_tcp nginx-cdn "$IP_CDN" "$P_CDN" 15
wait_tcp nginx-ghcr "$IP_GREG" "$P_GREG" 15
wait_tcp nginx-ghcr "$IP_GCDN" "$P_GCDN" 15

# ---------------------------------------------------------------- seed images (offline)

say "building OCI image layouts"
OCI=$WORK/oci
mkdir -p "$OCI/src"
mkroot() { # mkroot DIR TEXT: a tiny root filesystem
    mkdir -p "$1/etc" "$1/usr/share/e2e"
    printf '%s\n' "$2" >"$1/usr/share/e2e/hello.txt"
    printf 'NAME="e2e"\nID=e2e\n' >"$1/etc/os-release"
    ln -sf ../usr/share/e2e/hello.txt "$1/etc/hello"
}
build_single() { # build_single IMAGE ROOTFS...
    local img=$1 layout=$OCI/$1 m dg sz
    shift
    oci_init "$layout"
    m=$(oci_image "$layout" amd64 "$@")
    read -r dg sz <<<"$m"
    oci_tag "$layout" application/vnd.oci.image.manifest.v1+json "$dg" "$sz" latest
    EXP_TOP[$img]=$dg
    EXP_HOST[$img]=$dg
    EXP_CHILD[$img]=""
}

mkroot "$OCI/src/small-1" "hello from small, layer 1"
mkdir -p "$OCI/src/small-2/usr/share/e2e"
head -c 300000 /dev/urandom >"$OCI/src/small-2/usr/share/e2e/noise.bin"
build_single small "$OCI/src/small-1" "$OCI/src/small-2"

mkroot "$OCI/src/secret-1" "top secret payload"
build_single secret "$OCI/src/secret-1"

mkroot "$OCI/src/late-1" "used by the redirect-expiry check only"
head -c 1000000 /dev/urandom >"$OCI/src/late-1/usr/share/e2e/late.bin"
build_single late "$OCI/src/late-1"

mkroot "$OCI/src/big-1" "the big image"
mkdir -p "$OCI/src/big-2/usr/share/e2e"
say "generating a ${BIG_MB} MiB random layer"
head -c "${BIG_MB}M" /dev/urandom >"$OCI/src/big-2/usr/share/e2e/big.bin"
build_single big "$OCI/src/big-1" "$OCI/src/big-2"

# build_index IMAGE: an index over linux/amd64 and linux/arm64
build_index() {
    local img=$1 layout=$OCI/$1 amd_dg amd_sz arm_dg arm_sz idx_dg idx_sz
    oci_init "$layout"
    mkroot "$OCI/src/$img-amd64" "$img for amd64"
    mkroot "$OCI/src/$img-arm64" "$img for arm64"
    read -r amd_dg amd_sz <<<"$(oci_image "$layout" amd64 "$OCI/src/$img-amd64")"
    read -r arm_dg arm_sz <<<"$(oci_image "$layout" arm64 "$OCI/src/$img-arm64")"
    read -r idx_dg idx_sz <<<"$(oci_index "$layout" "amd64 $amd_dg $amd_sz" "arm64 $arm_dg $arm_sz")"
    oci_tag "$layout" application/vnd.oci.image.index.v1+json "$idx_dg" "$idx_sz" latest
    EXP_TOP[$img]=$idx_dg
    EXP_HOST[$img]=$amd_dg
    EXP_CHILD[$img]="${amd_dg#sha256:} ${arm_dg#sha256:}"
}
build_index multi

# the ghcr-like registry's images (their own content: a mis-routed request cannot match)
mkroot "$OCI/src/gtool-1" "ghcr owner/tool 1.0"
head -c 200000 /dev/urandom >"$OCI/src/gtool-1/usr/share/e2e/tool.bin"
build_single gtool "$OCI/src/gtool-1"
mkroot "$OCI/src/gprivate-1" "ghcr owner/private: for logged-in users only"
build_single gprivate "$OCI/src/gprivate-1"
build_index gmulti

for img in $HUB_IMAGES $GHCR_IMAGES; do
    EXP_BLOBS[$img]=$(oci_blobs_of "$OCI/$img" "${EXP_TOP[$img]}" | tr '\n' ' ')
    host_manifest=$OCI/$img/blobs/sha256/${EXP_HOST[$img]#sha256:}
    EXP_CONFIG[$img]=$(jq -r .config.digest "$host_manifest")
    EXP_LAYER[$img]=$(jq -r '.layers[0].digest' "$host_manifest")
    say "image $img: ${EXP_TOP[$img]} (blobs: ${EXP_BLOBS[$img]})"
done

seed() { # seed IMAGE REGISTRY CERT_DIR USER:PASS
    local img=$1 all=()
    [[ $img == multi || $img == gmulti ]] && all=(--all)
    sk copy --quiet "${all[@]}" --preserve-digests --dest-creds "$4" --dest-cert-dir "$3" \
        "oci:$OCI/$img:latest" "docker://$2/${IMG_REPO[$img]}:${IMG_TAG[$img]:-latest}" \
        >"$LOGS/seed-$img.log" 2>&1 || { cat "$LOGS/seed-$img.log" >&2; die "seeding $img failed"; }
}
say "seeding the upstream registries with skopeo (as $USER_NAME and $GUSER_NAME)"
for img in $HUB_IMAGES; do
    seed "$img" "$REG" "$WORK/certs.d" "$USER_NAME:$USER_PASS"
done
for img in $GHCR_IMAGES; do
    seed "$img" "$GREG" "$WORK/certs.d-ghcr" "$GUSER_NAME:$GUSER_PASS"
done
say "seeded"

# ---------------------------------------------------------------- the upstream itself

BIG_LAYER_HEX=$(jq -r '.layers[1].digest' "$OCI/big/blobs/sha256/${EXP_TOP[big]#sha256:}")
BIG_LAYER_HEX=${BIG_LAYER_HEX#sha256:}

# token [BASE] SCOPE [CURL ARGS...]: prints a bearer token from BASE (default: the realm)
token_from() {
    local base=$1 scope=$2
    shift 2
    cu --fail-with-body -G "$base" --data-urlencode "service=$SERVICE" \
        --data-urlencode "scope=$scope" "$@" | jq -er .token
}

up_challenge() {
    local h
    h=$(cu -o /dev/null -D - "https://$REG/v2/")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 401' <<<"$h" || fail "expected 401"
    grep -qi "^www-authenticate: Bearer realm=\"https://$IP_AUTH:$P_AUTH/token\",service=\"$SERVICE\"" <<<"$h" ||
        fail "unexpected challenge"
}

up_inspect() {
    local img
    for img in small multi big secret late; do
        local creds=()
        [[ $img == secret ]] && creds=(--creds "$USER_NAME:$USER_PASS")
        got=sha256:$(sk inspect --raw "${creds[@]}" --cert-dir "$WORK/certs.d" \
            "docker://$REG/${IMG_REPO[$img]}:latest" | sha256sum | cut -d' ' -f1)
        expect_eq "upstream manifest of $img" "$got" "${EXP_TOP[$img]}"
    done
}

up_copy() {
    rm -rf "$WORK/out/up-small" "$WORK/out/up-multi"
    sk copy --src-cert-dir "$WORK/certs.d" "docker://$REG/library/small:latest" "dir:$WORK/out/up-small"
    verify_dir small "$WORK/out/up-small"
    sk copy --all --src-cert-dir "$WORK/certs.d" "docker://$REG/library/multi:latest" "dir:$WORK/out/up-multi"
    verify_dir multi "$WORK/out/up-multi"
}

up_private() {
    rm -rf "$WORK/out/up-secret"
    if sk inspect --raw --cert-dir "$WORK/certs.d" "docker://$REG/private/secret:latest"; then
        fail "anonymous pull of private/secret succeeded"
    fi
    echo "ok: anonymous pull refused"
    if sk inspect --raw --creds "$USER_NAME:wrong" --cert-dir "$WORK/certs.d" "docker://$REG/private/secret:latest"; then
        fail "pull with a wrong password succeeded"
    fi
    echo "ok: wrong password refused"
    sk copy --src-creds "$USER_NAME:$USER_PASS" --src-cert-dir "$WORK/certs.d" \
        "docker://$REG/private/secret:latest" "dir:$WORK/out/up-secret"
    verify_dir secret "$WORK/out/up-secret"
}

up_token_post() {
    local body
    body=$(cu --fail-with-body -X POST "https://$IP_AUTH:$P_AUTH/token" \
        --data-urlencode grant_type=password --data-urlencode "username=$USER_NAME" \
        --data-urlencode "password=$USER_PASS" --data-urlencode "service=$SERVICE" \
        --data-urlencode client_id=e2e --data-urlencode access_type=offline \
        --data-urlencode "scope=repository:private/secret:pull repository:library/small:pull")
    echo "$body" | jq .
    jq -e '.token and .access_token and .expires_in == 300 and .issued_at and .refresh_token' <<<"$body" >/dev/null
    code=$(cu -o /dev/null -w '%{http_code}' -X POST "https://$IP_AUTH:$P_AUTH/token" \
        --data-urlencode grant_type=password --data-urlencode "username=$USER_NAME" \
        --data-urlencode "password=nope" --data-urlencode "service=$SERVICE")
    expect_eq "POST /token with a wrong password" "$code" 401
    code=$(cu -o /dev/null -w '%{http_code}' -u "$USER_NAME:nope" \
        "https://$IP_AUTH:$P_AUTH/token?service=$SERVICE&scope=repository:library/small:pull")
    expect_eq "GET /token with a wrong password" "$code" 401
}

up_cdn() {
    local tok h loc code
    tok=$(token_from "https://$IP_AUTH:$P_AUTH/token" "repository:library/big:pull")
    h=$(cu -o /dev/null -D - -H "Authorization: Bearer $tok" \
        "https://$REG/v2/library/big/blobs/sha256:$BIG_LAYER_HEX")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 307' <<<"$h" || fail "blob GET is not a 307"
    loc=$(grep -i '^location:' <<<"$h" | cut -d' ' -f2- | tr -d '\r')
    [[ $loc == "https://$IP_CDN:$P_CDN/docker/registry/v2/blobs/sha256/"*"/$BIG_LAYER_HEX/data?md5="*"&expires="* ]] ||
        fail "unexpected redirect target: $loc"
    code=$(cu -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$loc")
    expect_eq "CDN with an Authorization header" "$code" 400
    code=$(cu -o /dev/null -w '%{http_code}' "${loc%%\?*}")
    expect_eq "CDN without a signature" "$code" 403
    code=$(cu -o /dev/null -w '%{http_code}' "$("$REGTOKEN" sign-url --secret "$CDN_SECRET" --ttl -5 "${loc%%\?*}")")
    expect_eq "CDN with an expired signature" "$code" 410
    got=$(cu --fail "$loc" | sha256sum | cut -d' ' -f1)
    expect_eq "CDN full download sha256" "$got" "$BIG_LAYER_HEX"
    code=$(cu -o "$WORK/range.bin" -w '%{http_code}' -r 1000-1999 "$loc")
    expect_eq "CDN range status" "$code" 206
    expect_eq "CDN range bytes" "$(sha256sum <"$WORK/range.bin")" \
        "$(tail -c +1001 "$OCI/big/blobs/sha256/$BIG_LAYER_HEX" | head -c 1000 | sha256sum)"
    # HEAD on the registry host is redirected too
    h=$(cu -I -H "Authorization: Bearer $tok" "https://$REG/v2/library/big/blobs/sha256:$BIG_LAYER_HEX")
    grep -q '^HTTP/[0-9.]* 307' <<<"$h" || fail "blob HEAD is not a 307"
    # without a token: 401, not a redirect
    code=$(cu -o /dev/null -w '%{http_code}' "https://$REG/v2/library/big/blobs/sha256:$BIG_LAYER_HEX")
    expect_eq "blob GET without a token" "$code" 401
}

# ---- the ghcr-like registry on its own

gtoken_from() { # gtoken_from REALM SCOPE [CURL ARGS...]: a token for the ghcr-like service
    local base=$1 scope=$2
    shift 2
    cu --fail-with-body -G "$base" --data-urlencode "service=$GSERVICE" \
        --data-urlencode "scope=$scope" "$@" | jq -er .token
}
GCD=(--cert-dir "$WORK/certs.d-ghcr")

up_g_challenge() {
    local h
    h=$(cu -o /dev/null -D - "https://$GREG/v2/")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 401' <<<"$h" || fail "expected 401"
    grep -qi "^www-authenticate: Bearer realm=\"https://$IP_GAUTH:$P_GAUTH/token\",service=\"$GSERVICE\"" <<<"$h" ||
        fail "unexpected challenge"
}

up_g_pull() {
    local img got
    for img in gtool gmulti; do
        got=sha256:$(sk inspect --raw "${GCD[@]}" "docker://$GREG/${IMG_REPO[$img]}:${IMG_TAG[$img]:-latest}" |
            sha256sum | cut -d' ' -f1)
        expect_eq "upstream manifest of $img" "$got" "${EXP_TOP[$img]}"
    done
    if sk inspect --raw "${GCD[@]}" "docker://$GREG/owner/private:1"; then
        fail "anonymous pull of owner/private succeeded"
    fi
    echo "ok: anonymous pull of owner/private refused"
    for c in "$GUSER_NAME:$GUSER_PASS" "$USER_NAME:$USER_PASS"; do
        got=sha256:$(sk inspect --raw --creds "$c" "${GCD[@]}" "docker://$GREG/owner/private:1" |
            sha256sum | cut -d' ' -f1)
        expect_eq "upstream manifest of owner/private as ${c%%:*}" "$got" "${EXP_TOP[gprivate]}"
    done
    rm -rf "$WORK/out/up-gmulti"
    sk copy --all --src-cert-dir "$WORK/certs.d-ghcr" "docker://$GREG/owner/multi:latest" "dir:$WORK/out/up-gmulti"
    verify_dir gmulti "$WORK/out/up-gmulti"
}

# The two upstreams trust only their own tokens, and octo exists only on the ghcr-like one.
up_g_isolated() {
    local tok code h loc layer=${EXP_LAYER[gtool]}
    tok=$(token_from "https://$IP_AUTH:$P_AUTH/token" "repository:owner/tool:pull")
    code=$(cu -o /dev/null -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "https://$GREG/v2/owner/tool/manifests/1.0")
    expect_eq "ghcr-like registry with a docker.io token" "$code" 401
    code=$(cu -o /dev/null -w '%{http_code}' -u "$GUSER_NAME:$GUSER_PASS" \
        "https://$IP_AUTH:$P_AUTH/token?service=$SERVICE&scope=repository:library/small:pull")
    expect_eq "docker.io token server with $GUSER_NAME" "$code" 401
    tok=$(gtoken_from "https://$IP_GAUTH:$P_GAUTH/token" "repository:owner/tool:pull")
    code=$(cu -o /dev/null -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "https://$GREG/v2/owner/tool/manifests/1.0")
    expect_eq "ghcr-like registry with its own token" "$code" 200
    code=$(cu -o /dev/null -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "https://$REG/v2/library/small/manifests/latest")
    expect_eq "docker.io registry with a ghcr-like token" "$code" 401
    h=$(cu -o /dev/null -D - -H "Authorization: Bearer $tok" "https://$GREG/v2/owner/tool/blobs/$layer")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 307' <<<"$h" || fail "blob GET is not a 307"
    loc=$(grep -i '^location:' <<<"$h" | cut -d' ' -f2- | tr -d '\r')
    [[ $loc == "https://$IP_GCDN:$P_GCDN/docker/registry/v2/blobs/sha256/"*"/data?md5="*"&expires="* ]] ||
        fail "unexpected redirect target: $loc"
    code=$(cu -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$loc")
    expect_eq "ghcr-like CDN with an Authorization header" "$code" 400
    code=$(cu -o /dev/null -w '%{http_code}' "$("$REGTOKEN" sign-url --secret "$CDN_SECRET" --ttl 60 "${loc%%\?*}")")
    expect_eq "ghcr-like CDN with a URL signed with docker.io's CDN secret" "$code" 403
    got=$(cu --fail "$loc" | sha256sum | cut -d' ' -f1)
    expect_eq "ghcr-like CDN download" "sha256:$got" "$layer"
}

say "checking the upstream harness directly (no ocirelay involved)"
check "upstream: /v2/ challenge" up_challenge
check "upstream: token server GET/POST and bad credentials" up_token_post
check "upstream: manifests as seeded (skopeo inspect)" up_inspect
check "upstream: skopeo copy small + multi --all straight from upstream" up_copy
check "upstream: private repo needs credentials" up_private
check "upstream: 307 to signed CDN, no-auth/expiry/range rules" up_cdn
check "upstream ghcr: /v2/ challenge (service ghcr.io, own realm)" up_g_challenge
check "upstream ghcr: manifests as seeded, owner/private needs credentials" up_g_pull
check "upstream ghcr: own tokens, own users, own signed CDN" up_g_isolated
if ((NFAIL > 0)); then
    echo "!!! the upstream harness itself is broken: the checks below would say nothing about ocirelay"
    summary_and_exit
fi
if [[ $UPSTREAM_ONLY == 1 ]]; then
    summary_and_exit
fi

# ---------------------------------------------------------------- ocirelay

if [[ ! -x $OCIRELAY_BIN ]]; then
    say "building ocirelay ($OCIRELAY_BIN missing)"
    if ! cargo build --release --bin ocirelay >"$LOGS/build-ocirelay.log" 2>&1; then
        NFAIL=$((NFAIL + 1))
        echo "FAIL build ocirelay   (log: $LOGS/build-ocirelay.log)"
        tail -n 30 "$LOGS/build-ocirelay.log" | sed 's/^/    | /'
        summary_and_exit
    fi
fi

# A realistic multi-registry config: the built-in registries stay (quay.io, gcr.io, ...: never
# asked for here), docker.io and ghcr.io are replaced by the loopback upstreams, and ghcr.io
# also gets a host route by IP literal (its own listener address, same port).
cat >"$WORK/ocirelay.toml" <<EOF
listen = ["$RELAY", "$RELAY2"]
# Behind HAProxy (the load balancer checks): only its source address is trusted.
proxy_protocol_listen = ["$RELAYPROXY"]
trusted_proxies = ["$IP_LBOUT/32"]

[[tls_listener]]
addr = "$RELAYTLS"
cert = "$CERTS/relay-fullchain.pem"
key = "$CERTS/relay-key.pem"

[[tls_listener]]
addr = "$RELAYPROXYTLS"
cert = "$CERTS/relay-fullchain.pem"
key = "$CERTS/relay-key.pem"
proxy_protocol = true

[[tls_listener]]
addr = "$RELAY2TLS"
cert = "$CERTS/relay-fullchain.pem"
key = "$CERTS/relay-key.pem"

[[registry]]
name = "docker.io"
upstream = "https://$REG"
ca_file = "$CERTS/ca.pem"
default = true

[[registry]]
name = "ghcr.io"
upstream = "https://$GREG"
ca_file = "$CERTS/ghcr/ca.pem"
hosts = ["$IP_RELAY2"]

# The relay checks read the upstreams' logs: no cache here (the cache has
# its own phase at the end, with its own ocirelay).
[cache]
enabled = false
EOF
CDN_LOG_MARK=$(wc -l <"$WORK/nginx-cdn/access.log")
GCDN_LOG_MARK=$(wc -l <"$GHCR_CDN_LOG")
start ocirelay "$OCIRELAY_BIN" --config "$WORK/ocirelay.toml"
relay_listens() {
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAY" 20
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAYTLS" 5
    wait_tcp ocirelay "$IP_RELAY2" "$P_RELAY" 5
    wait_tcp ocirelay "$IP_RELAY2" "$P_RELAYTLS" 5
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAYPROXY" 5
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAYPROXYTLS" 5
}
check "ocirelay: starts and listens on $RELAY, $RELAYTLS, $RELAY2, $RELAY2TLS, $RELAYPROXY, $RELAYPROXYTLS" relay_listens
if ((NFAIL > 0)); then
    summary_and_exit
fi

relay_alive() {
    alive ocirelay || fail "ocirelay is not running any more (see $LOGS/ocirelay.log)"
}

# ---- raw protocol, with curl (failures show the exact exchange)

r_challenge() {
    local h
    h=$(cu -v -o /dev/null -D - "http://$RELAY/v2/")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 401' <<<"$h" || fail "expected 401 from /v2/"
    grep -qi "^www-authenticate: Bearer realm=\"http://$RELAY/" <<<"$h" ||
        fail "challenge realm does not point at ocirelay ($RELAY)"
    grep -qi "$IP_AUTH" <<<"$h" && fail "upstream realm leaked"
    h=$(cu -v -o /dev/null -D - "https://$RELAYTLS/v2/library/small/manifests/latest")
    echo "$h"
    grep -qi "^www-authenticate: Bearer realm=\"https://$RELAYTLS/" <<<"$h" ||
        fail "TLS listener: challenge realm does not point at ocirelay ($RELAYTLS)"
}

# relay_token SCHEME HOST SCOPE [CURL ARGS]: a token through ocirelay's realm
relay_token() {
    local scheme=$1 host=$2 scope=$3 realm
    shift 3
    realm=$(cu -o /dev/null -D - "$scheme://$host/v2/" | grep -i '^www-authenticate:' |
        sed -E 's/.*realm="([^"]*)".*/\1/')
    [[ -n $realm ]] || fail "no realm from $scheme://$host/v2/"
    token_from "$realm" "$scope" "$@"
}

r_token() {
    local tok
    tok=$(relay_token http "$RELAY" "repository:library/small:pull")
    echo "token: ${tok:0:40}..."
    tok=$(relay_token http "$RELAY" "repository:small:pull")
    echo "token for a one-component name: ${tok:0:40}..."
    body=$(cu -v --fail-with-body -X POST "http://$RELAY/token" \
        --data-urlencode grant_type=password --data-urlencode "username=$USER_NAME" \
        --data-urlencode "password=$USER_PASS" --data-urlencode "service=$SERVICE" \
        --data-urlencode client_id=e2e --data-urlencode "scope=repository:private/secret:pull")
    jq -e '.access_token // .token' <<<"$body" >/dev/null || fail "POST /token through ocirelay: $body"
    echo "ok: OAuth2 POST through ocirelay"
    code=$(cu -o /dev/null -w '%{http_code}' -u "$USER_NAME:nope" \
        "http://$RELAY/token?service=$SERVICE&scope=repository:private/secret:pull")
    expect_eq "token with a wrong password through ocirelay" "$code" 401
}

r_manifest() {
    local tok h name
    for name in library/small small; do
        tok=$(relay_token http "$RELAY" "repository:$name:pull")
        h=$(cu -v -I "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "http://$RELAY/v2/$name/manifests/latest")
        echo "$h"
        grep -q '^HTTP/[0-9.]* 200' <<<"$h" || fail "HEAD manifest of $name: not 200"
        grep -qi "^docker-content-digest: ${EXP_TOP[small]}" <<<"$h" || fail "HEAD manifest of $name: digest"
        grep -qi "^content-length: $(stat -c %s "$OCI/small/blobs/sha256/${EXP_TOP[small]#sha256:}")" <<<"$h" ||
            fail "HEAD manifest of $name: content-length"
        got=$(cu "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "http://$RELAY/v2/$name/manifests/latest" |
            sha256sum | cut -d' ' -f1)
        expect_eq "GET manifest of $name" "sha256:$got" "${EXP_TOP[small]}"
        got=$(cu "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "http://$RELAY/v2/$name/manifests/${EXP_TOP[small]}" |
            sha256sum | cut -d' ' -f1)
        expect_eq "GET manifest of $name by digest" "sha256:$got" "${EXP_TOP[small]}"
    done
    code=$(cu -o "$WORK/404.json" -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "http://$RELAY/v2/small/manifests/badtag")
    cat "$WORK/404.json"
    expect_eq "unknown tag" "$code" 404
}

r_blob() {
    local tok layer h code
    layer=${EXP_LAYER[small]}
    tok=$(relay_token http "$RELAY" "repository:library/small:pull")
    h=$(cu -v -I -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/small/blobs/$layer")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 200' <<<"$h" || fail "HEAD blob: not 200 (ocirelay should follow the redirect)"
    grep -qi "^content-length: $(stat -c %s "$OCI/small/blobs/sha256/${layer#sha256:}")" <<<"$h" ||
        fail "HEAD blob: content-length"
    got=$(cu -v --fail -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/small/blobs/$layer" |
        sha256sum | cut -d' ' -f1)
    expect_eq "GET blob" "sha256:$got" "$layer"
    code=$(cu -v -o "$WORK/r-range.bin" -w '%{http_code}' -r 100- -H "Authorization: Bearer $tok" \
        "http://$RELAY/v2/small/blobs/$layer")
    expect_eq "Range: bytes=100- status" "$code" 206
    expect_eq "Range: bytes=100- content" "$(sha256sum <"$WORK/r-range.bin")" \
        "$(tail -c +101 "$OCI/small/blobs/sha256/${layer#sha256:}" | sha256sum)"
    relay_alive
}

# Range reads of the big layer (what containerd does to resume a cut download).
r_big_range() {
    local tok f=$OCI/big/blobs/sha256/$BIG_LAYER_HEX size code mid
    size=$(stat -c %s "$f")
    tok=$(relay_token http "$RELAY" "repository:library/big:pull")
    code=$(cu -v -o "$WORK/r-big-tail.bin" -w '%{http_code}' -r "$((size - 1048576))-" \
        -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/big/blobs/sha256:$BIG_LAYER_HEX")
    expect_eq "Range: bytes=$((size - 1048576))- status" "$code" 206
    expect_eq "last MiB" "$(sha256sum <"$WORK/r-big-tail.bin")" "$(tail -c 1048576 "$f" | sha256sum)"
    mid=$((size / 2))
    code=$(cu -v -o "$WORK/r-big-mid.bin" -w '%{http_code}' -r "$mid-$((mid + 999))" \
        -H "Authorization: Bearer $tok" "https://$RELAYTLS/v2/big/blobs/sha256:$BIG_LAYER_HEX")
    expect_eq "Range: bytes=$mid-$((mid + 999)) status" "$code" 206
    expect_eq "1000 bytes in the middle" "$(sha256sum <"$WORK/r-big-mid.bin")" \
        "$(tail -c +"$((mid + 1))" "$f" | head -c 1000 | sha256sum)"
    relay_alive
}

# A client that hangs up in the middle of a big blob must not hurt the relay.
r_client_abort() {
    local tok i got
    tok=$(relay_token http "$RELAY" "repository:library/big:pull")
    for i in 1 2 3; do
        cu -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/big/blobs/sha256:$BIG_LAYER_HEX" |
            head -c $((i * 3000000)) >/dev/null || true
    done
    sleep 1
    relay_alive
    got=$(cu --fail -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/big/blobs/sha256:$BIG_LAYER_HEX" |
        sha256sum | cut -d' ' -f1)
    expect_eq "full GET after aborted ones" "$got" "$BIG_LAYER_HEX"
}

# Several clients pulling the big image at once, over both listeners.
s_big_parallel() {
    local pids=() i rc=0
    for i in 1 2 3; do
        rm -rf "$OUT/big-par-$i"
    done
    sk copy --retry-times 0 "${HTTP_SRC[@]}" "docker://$RELAY/library/big:latest" "dir:$OUT/big-par-1" &
    pids+=($!)
    sk copy --retry-times 0 "${TLS_SRC[@]}" "docker://$RELAYTLS/big:latest" "dir:$OUT/big-par-2" &
    pids+=($!)
    sk copy --retry-times 0 "${HTTP_SRC[@]}" "docker://$RELAY/big:latest" "dir:$OUT/big-par-3" &
    pids+=($!)
    for i in "${pids[@]}"; do
        wait "$i" || rc=1
    done
    ((rc == 0)) || fail "a parallel pull failed"
    for i in 1 2 3; do
        verify_dir big "$OUT/big-par-$i" host
    done
    relay_alive
}

# A client HEAD must stay a HEAD upstream (Docker Hub counts GETs against the pull limit).
r_head_stays_head() {
    local tok before h
    before=$(wc -l <"$WORK/nginx-registry/access.log")
    tok=$(relay_token http "$RELAY" "repository:library/late:pull")
    h=$(cu -v -I "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/late/manifests/latest")
    echo "$h"
    grep -qi "^docker-content-digest: ${EXP_TOP[late]}" <<<"$h" || fail "HEAD manifest: digest header"
    sleep 0.5
    tail -n +"$((before + 1))" "$WORK/nginx-registry/access.log" | tee "$WORK/head-upstream.log"
    grep -q '"HEAD /v2/library/late/manifests/latest' "$WORK/head-upstream.log" ||
        fail "no HEAD of the manifest upstream"
    if grep -q '"GET /v2/library/late/manifests/' "$WORK/head-upstream.log"; then
        fail "a client HEAD became a GET upstream"
    fi
}

# A TLS ClientHello on a plain-HTTP listener should be turned down at once (nginx answers
# 400): docker, podman and skopeo with insecure registries / --tls-verify=false probe https
# first and fall back to http only when that fails, or after their 10 s TLS handshake timeout.
r_tls_probe() {
    local t0 t1 rc=0 ms
    t0=$(date +%s%N)
    timeout -k 2 10 curl -sS -k --noproxy '*' --max-time 5 -o /dev/null "https://$RELAY/v2/" || rc=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    echo "curl https://$RELAY/v2/ (a plain-HTTP listener): exit $rc after $ms ms"
    ((rc != 0)) || fail "a TLS handshake with the plain listener succeeded"
    ((ms < 3000)) || fail "the plain listener took $ms ms to turn down a TLS ClientHello"
}

# ---- behind a load balancer: HAProxy in TCP mode in front of the PROXY listeners

start_haproxy() {
    cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend plain
    bind $LB
    default_backend relay_plain
frontend tls
    bind $LBTLS
    default_backend relay_tls
backend relay_plain
    server relay $RELAYPROXY send-proxy source $IP_LBOUT
backend relay_tls
    server relay $RELAYPROXYTLS send-proxy-v2 source $IP_LBOUT
EOF
    start haproxy haproxy -db -f "$WORK/haproxy.cfg"
    wait_tcp haproxy "$IP_LB" "$P_LB" 10
    wait_tcp haproxy "$IP_LB" "$P_LBTLS" 5
}

# access_line REGEX: waits (access lines are flushed every second) for a line of
# ocirelay's log matching REGEX, and prints it.
access_line() {
    local i
    for ((i = 0; i < 50; i++)); do
        if grep -E "$1" "$LOGS/ocirelay.log"; then
            return 0
        fi
        sleep 0.1
    done
    fail "no line matching '$1' in $LOGS/ocirelay.log"
}

# The client's own address in the access log, through HAProxy's v1 (plain) and v2 (TLS)
# headers; HAProxy's address itself never appears as a client.
lb_client_address() {
    local code
    code=$(cu --interface "$IP_CLIENT" -o /dev/null -w '%{http_code}' "http://$LB/v2/?via=lb-v1")
    expect_eq "status through HAProxy (v1)" "$code" 401
    code=$(cu --interface "$IP_CLIENT" -o /dev/null -w '%{http_code}' "https://$LBTLS/v2/?via=lb-v2")
    expect_eq "status through HAProxy (TLS, v2)" "$code" 401
    access_line " $IP_CLIENT:[0-9]+ GET /v2/[?]via=lb-v1 401 "
    access_line " $IP_CLIENT:[0-9]+ GET /v2/[?]via=lb-v2 401 "
    if grep -F " $IP_LBOUT:" "$LOGS/ocirelay.log"; then
        fail "HAProxy's own address logged as a client"
    fi
}

# A whole pull (token, manifests, blobs through the 307) over TLS through HAProxy.
lb_skopeo() {
    sk_pull small small-lb "${TLS_SRC[@]}" "docker://$LBTLS/library/small:latest"
}

# What is refused: a PROXY header from a peer not trusted (curl from 127.0.0.1), a
# trusted peer with no header. A stranger without a header is served as itself.
lb_refusals() {
    local rc=0 code
    cu --haproxy-protocol -o /dev/null "http://$RELAYPROXY/v2/?via=forged" || rc=$?
    expect_eq "curl exit for a stranger's PROXY header (52: empty reply)" "$rc" 52
    rc=0
    cu --interface "$IP_LBOUT" -o /dev/null "http://$RELAYPROXY/v2/?via=no-header" || rc=$?
    expect_eq "curl exit for the trusted proxy without a header" "$rc" 52
    code=$(cu -o /dev/null -w '%{http_code}' "http://$RELAYPROXY/v2/?via=direct")
    expect_eq "a stranger without a header" "$code" 401
    access_line " $IP_RELAY:[0-9]+ GET /v2/[?]via=direct 401 "
    access_line "refused: it sent a PROXY header but is not in trusted_proxies"
    access_line "refused: a trusted proxy sent no PROXY header"
    if grep -E "via=(forged|no-header)" "$LOGS/ocirelay.log"; then
        fail "a refused connection reached HTTP"
    fi
}

# The CDNs must never have seen an Authorization header from ocirelay.
r_cdn_no_auth() {
    local n name log mark
    for name in docker ghcr; do
        if [[ $name == docker ]]; then
            log=$WORK/nginx-cdn/access.log mark=$CDN_LOG_MARK
        else
            log=$GHCR_CDN_LOG mark=$GCDN_LOG_MARK
        fi
        tail -n +"$((mark + 1))" "$log" >"$WORK/cdn-relay-$name.log"
        n=$(wc -l <"$WORK/cdn-relay-$name.log")
        echo "$name CDN requests made while ocirelay was tested: $n"
        ((n > 0)) || fail "ocirelay never fetched from the $name CDN"
        if grep -v ' auth=- ' "$WORK/cdn-relay-$name.log"; then
            fail "requests above reached the $name CDN with an Authorization header"
        fi
        if grep -E '" (400|403|410) ' "$WORK/cdn-relay-$name.log"; then
            fail "the $name CDN refused the requests above"
        fi
    done
}

# A redirect must not be reused after its signature expired: HEAD a blob (ocirelay learns
# its CDN URL), wait past the URL's lifetime, then GET it.
r_redirect_expiry() {
    local tok layer code
    layer=${EXP_LAYER[late]}
    tok=$(relay_token http "$RELAY" "repository:library/late:pull")
    code=$(cu -o /dev/null -w '%{http_code}' -I -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/late/blobs/$layer")
    echo "HEAD: $code"
    say "sleeping $((CDN_TTL + 3))s so that the signed CDN URL expires" >&2
    sleep $((CDN_TTL + 3))
    tok=$(relay_token http "$RELAY" "repository:library/late:pull")
    got=$(cu -v --fail -H "Authorization: Bearer $tok" "http://$RELAY/v2/library/late/blobs/$layer" |
        sha256sum | cut -d' ' -f1)
    expect_eq "GET blob after the first CDN URL expired" "sha256:$got" "$layer"
}

# ---- real clients

OUT=$WORK/out
sk_pull() { # sk_pull IMAGE OUTNAME SKOPEO-ARGS... SRC
    local img=$1 out=$OUT/$2 mode=top
    shift 2
    rm -rf "$out"
    [[ " $* " == *" --all "* ]] || mode=host
    sk copy --retry-times 0 "$@" "dir:$out"
    relay_alive
    verify_dir "$img" "$out" "$mode"
}
TLS_SRC=(--src-cert-dir "$WORK/certs.d")
HTTP_SRC=(--src-tls-verify=false)

s_small_http() { sk_pull small small-http "${HTTP_SRC[@]}" "docker://$RELAY/library/small:latest"; }
s_small_http_short() { sk_pull small small-http-short "${HTTP_SRC[@]}" "docker://$RELAY/small:latest"; }
s_small_tls() { sk_pull small small-tls "${TLS_SRC[@]}" "docker://$RELAYTLS/library/small:latest"; }
s_small_tls_short() { sk_pull small small-tls-short "${TLS_SRC[@]}" "docker://$RELAYTLS/small:latest"; }
s_multi_http() { sk_pull multi multi-http --all "${HTTP_SRC[@]}" "docker://$RELAY/library/multi:latest"; }
s_multi_tls_short() { sk_pull multi multi-tls --all "${TLS_SRC[@]}" "docker://$RELAYTLS/multi:latest"; }
s_big_http() { sk_pull big big-http "${HTTP_SRC[@]}" "docker://$RELAY/library/big:latest"; }
s_big_tls_short() { sk_pull big big-tls "${TLS_SRC[@]}" "docker://$RELAYTLS/big:latest"; }
s_private() {
    rm -rf "$OUT/secret-anon"
    if sk copy --retry-times 0 "${HTTP_SRC[@]}" "docker://$RELAY/private/secret:latest" "dir:$OUT/secret-anon"; then
        fail "anonymous pull of private/secret through ocirelay succeeded"
    fi
    echo "ok: anonymous pull refused"
    if sk inspect --raw --retry-times 0 --tls-verify=false --creds "$USER_NAME:nope" \
        "docker://$RELAY/private/secret:latest"; then
        fail "wrong password accepted through ocirelay"
    fi
    echo "ok: wrong password refused"
    sk_pull secret secret-http "${HTTP_SRC[@]}" --src-creds "$USER_NAME:$USER_PASS" \
        "docker://$RELAY/private/secret:latest"
    sk_pull secret secret-tls "${TLS_SRC[@]}" --src-creds "$USER_NAME:$USER_PASS" \
        "docker://$RELAYTLS/private/secret:latest"
}

p_pull() { # p_pull IMAGE REF PODMAN-PULL-ARGS...
    local img=$1 ref=$2 digest id repodigests
    shift 2
    pm pull "$@" "$ref"
    relay_alive
    digest=$(pm image inspect --format '{{.Digest}}' "$ref")
    repodigests=$(pm image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$ref")
    id=$(pm image inspect --format '{{.Id}}' "$ref")
    echo "podman: digest=$digest id=$id repodigests=$repodigests"
    [[ $digest == "${EXP_TOP[$img]}" || $repodigests == *"@${EXP_TOP[$img]}"* ]] ||
        fail "podman image digest $digest / $repodigests, want ${EXP_TOP[$img]}"
    expect_eq "podman image id (config digest)" "sha256:$id" "${EXP_CONFIG[$img]}"
}
p_small_http() { p_pull small "$RELAY/library/small:latest" --tls-verify=false; }
p_multi_tls() { p_pull multi "$RELAYTLS/multi:latest" --cert-dir "$WORK/certs.d"; }
p_private() {
    if pm pull --tls-verify=false "$RELAY/private/secret:latest"; then
        fail "anonymous podman pull of private/secret succeeded"
    fi
    echo "ok: anonymous pull refused"
    p_pull secret "$RELAY/private/secret:latest" --tls-verify=false --creds "$USER_NAME:$USER_PASS"
}

# ---- the second registry (ghcr-like) through ocirelay: path prefix, host route, ?ns=

# challenge_of CURL-ARGS...: the WWW-Authenticate value of a 401 (the exchange on stderr)
challenge_of() {
    local h
    h=$(cu -v -o /dev/null -D - "$@")
    echo "$h" >&2
    grep -q '^HTTP/[0-9.]* 401' <<<"$h" || fail "expected a 401 from $*"
    grep -i '^www-authenticate:' <<<"$h" | cut -d' ' -f2- | tr -d '\r'
}
# param_of CHALLENGE NAME: one quoted parameter of a challenge
param_of() { sed -nE "s/.*[ ,]$2=\"([^\"]*)\".*/\1/p" <<<"$1"; }
# token_via CHALLENGE [CURL ARGS...]: a token from the realm the challenge names, with its
# service and scope, as a client would ask for it
token_via() {
    local ch=$1 realm service scope
    shift
    realm=$(param_of "$ch" realm)
    service=$(param_of "$ch" service)
    scope=$(param_of "$ch" scope)
    [[ -n $realm ]] || fail "no realm in: $ch"
    local args=(-G "$realm")
    [[ -n $service ]] && args+=(--data-urlencode "service=$service")
    [[ -n $scope ]] && args+=(--data-urlencode "scope=$scope")
    cu -v --fail-with-body "${args[@]}" "$@" | jq -er .token
}
expect_challenge() { # expect_challenge CHALLENGE REALM SERVICE [SCOPE]
    echo "challenge: $1"
    expect_eq "realm" "$(param_of "$1" realm)" "$2"
    expect_eq "service" "$(param_of "$1" service)" "$3"
    if [[ -n ${4:-} ]]; then
        expect_eq "scope" "$(param_of "$1" scope)" "$4"
    fi
    if grep -qE "$IP_GAUTH|$IP_AUTH" <<<"$1"; then
        fail "an upstream realm leaked: $1"
    fi
}
# manifest_digest URL TOKEN [CURL ARGS...]: sha256 of the manifest body (fails unless 200)
manifest_digest() {
    local url=$1 tok=$2
    shift 2
    echo "sha256:$(cu -v --fail "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "$@" "$url" |
        sha256sum | cut -d' ' -f1)"
}

r_g_challenge() {
    local ch
    ch=$(challenge_of "http://$RELAY2/v2/")
    expect_challenge "$ch" "http://$RELAY2/token/ghcr.io" "$GSERVICE"
    ch=$(challenge_of "https://$RELAY2TLS/v2/owner/tool/manifests/1.0")
    expect_challenge "$ch" "https://$RELAY2TLS/token/ghcr.io" "$GSERVICE" "repository:owner/tool:pull"
    ch=$(challenge_of "http://$RELAY/v2/ghcr.io/owner/tool/manifests/1.0")
    expect_challenge "$ch" "http://$RELAY/token/ghcr.io" "$GSERVICE" "repository:ghcr.io/owner/tool:pull"
    ch=$(challenge_of "http://$RELAY/v2/owner/tool/manifests/1.0?ns=ghcr.io")
    expect_challenge "$ch" "http://$RELAY/token/ghcr.io" "$GSERVICE" "repository:owner/tool:pull"
    # the port of the Host header plays no part in the host route
    for host in "$IP_RELAY2" "$IP_RELAY2:1"; do
        ch=$(challenge_of -H "Host: $host" "http://$RELAY/v2/owner/tool/manifests/1.0")
        expect_challenge "$ch" "http://$host/token/ghcr.io" "$GSERVICE" "repository:owner/tool:pull"
    done
    # no hint at all: the default registry (docker.io)
    ch=$(challenge_of "http://$RELAY/v2/owner/tool/manifests/1.0")
    expect_challenge "$ch" "http://$RELAY/token" "$SERVICE" "repository:owner/tool:pull"
}

r_g_manifest() {
    local ch tok code host
    ch=$(challenge_of "http://$RELAY/v2/ghcr.io/owner/tool/manifests/1.0")
    tok=$(token_via "$ch")
    tail -n 1 "$LOGS/regtoken-ghcr.log" | tee /dev/stderr | grep 'granted=\[repository:owner/tool:pull\]' >/dev/null ||
        fail "the ghcr-like token server did not grant repository:owner/tool:pull"
    expect_eq "path prefix: manifest" "$(manifest_digest "http://$RELAY/v2/ghcr.io/owner/tool/manifests/1.0" "$tok")" \
        "${EXP_TOP[gtool]}"
    expect_eq "path prefix: manifest by digest" \
        "$(manifest_digest "http://$RELAY/v2/ghcr.io/owner/tool/manifests/${EXP_TOP[gtool]}" "$tok")" "${EXP_TOP[gtool]}"
    h=$(cu -v -I "${ACCEPT[@]}" -H "Authorization: Bearer $tok" "http://$RELAY/v2/ghcr.io/owner/tool/manifests/1.0")
    echo "$h"
    grep -qi "^docker-content-digest: ${EXP_TOP[gtool]}" <<<"$h" || fail "HEAD: digest header"
    # the upstream's token is good for the same repository whichever way it is routed
    expect_eq "host route: manifest" "$(manifest_digest "http://$RELAY2/v2/owner/tool/manifests/1.0" "$tok")" \
        "${EXP_TOP[gtool]}"
    expect_eq "host route (TLS): manifest" \
        "$(manifest_digest "https://$RELAY2TLS/v2/owner/tool/manifests/1.0" "$tok")" "${EXP_TOP[gtool]}"
    for host in "$IP_RELAY2" "$IP_RELAY2:1" "$IP_RELAY2:$P_RELAY"; do
        expect_eq "Host: $host on $RELAY" \
            "$(manifest_digest "http://$RELAY/v2/owner/tool/manifests/1.0" "$tok" -H "Host: $host")" "${EXP_TOP[gtool]}"
    done
    expect_eq "?ns=ghcr.io: manifest" \
        "$(manifest_digest "http://$RELAY/v2/owner/tool/manifests/1.0?ns=ghcr.io" "$tok")" "${EXP_TOP[gtool]}"
    # the index, by path prefix
    ch=$(challenge_of "http://$RELAY/v2/ghcr.io/owner/multi/manifests/latest")
    tok=$(token_via "$ch")
    expect_eq "path prefix: index" "$(manifest_digest "http://$RELAY/v2/ghcr.io/owner/multi/manifests/latest" "$tok")" \
        "${EXP_TOP[gmulti]}"
    # no hint: docker.io, which has no owner/multi and does not take ghcr's token
    code=$(cu -v -o /dev/null -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "http://$RELAY/v2/owner/multi/manifests/latest")
    expect_eq "no hint: docker.io refuses a ghcr token" "$code" 401
    # docker.io by path prefix too (library/ still added)
    ch=$(challenge_of "http://$RELAY/v2/docker.io/small/manifests/latest")
    expect_challenge "$ch" "http://$RELAY/token" "$SERVICE" "repository:docker.io/small:pull"
    tok=$(token_via "$ch")
    expect_eq "docker.io path prefix: manifest" \
        "$(manifest_digest "http://$RELAY/v2/docker.io/small/manifests/latest" "$tok")" "${EXP_TOP[small]}"
    # registries that are not configured
    code=$(cu -v -o "$WORK/r-unknown.json" -w '%{http_code}' "http://$RELAY/v2/nope.example/x/manifests/1")
    cat "$WORK/r-unknown.json"
    echo
    expect_eq "unknown path prefix" "$code" 404
    grep -q 'ghcr.io' "$WORK/r-unknown.json" || fail "the 404 does not list the routes"
    code=$(cu -v -o /dev/null -w '%{http_code}' "http://$RELAY/v2/x/y/manifests/1?ns=nope.example")
    expect_eq "unknown ?ns=" "$code" 404
    relay_alive
}

r_g_blob() {
    local ch tok layer=${EXP_LAYER[gtool]} f h code
    f=$OCI/gtool/blobs/sha256/${layer#sha256:}
    ch=$(challenge_of "http://$RELAY/v2/ghcr.io/owner/tool/blobs/$layer")
    tok=$(token_via "$ch")
    h=$(cu -v -I -H "Authorization: Bearer $tok" "http://$RELAY/v2/ghcr.io/owner/tool/blobs/$layer")
    echo "$h"
    grep -q '^HTTP/[0-9.]* 200' <<<"$h" || fail "HEAD blob: not 200 (ocirelay should follow the redirect to the ghcr-like CDN)"
    grep -qi "^content-length: $(stat -c %s "$f")" <<<"$h" || fail "HEAD blob: content-length"
    got=$(cu -v --fail -H "Authorization: Bearer $tok" "http://$RELAY/v2/ghcr.io/owner/tool/blobs/$layer" |
        sha256sum | cut -d' ' -f1)
    expect_eq "path prefix: GET blob" "sha256:$got" "$layer"
    code=$(cu -v -o "$WORK/r-g-range.bin" -w '%{http_code}' -r 1000- -H "Authorization: Bearer $tok" \
        "http://$RELAY2/v2/owner/tool/blobs/$layer")
    expect_eq "host route: Range status" "$code" 206
    expect_eq "host route: Range content" "$(sha256sum <"$WORK/r-g-range.bin")" "$(tail -c +1001 "$f" | sha256sum)"
    got=$(cu -v --fail -H "Authorization: Bearer $tok" "http://$RELAY/v2/owner/tool/blobs/$layer?ns=ghcr.io" |
        sha256sum | cut -d' ' -f1)
    expect_eq "?ns=ghcr.io: GET blob" "sha256:$got" "$layer"
    relay_alive
}

# Credentials reach the right token service: by the token path, the Host, or the scope's prefix.
r_g_token() {
    local body tok code scope=repository:owner/private:pull
    body=$(cu -v --fail-with-body -X POST "http://$RELAY/token/ghcr.io" \
        --data-urlencode grant_type=password --data-urlencode "username=$GUSER_NAME" \
        --data-urlencode "password=$GUSER_PASS" --data-urlencode "service=$GSERVICE" \
        --data-urlencode client_id=e2e --data-urlencode "scope=$scope")
    tok=$(jq -er '.access_token // .token' <<<"$body") || fail "OAuth2 POST /token/ghcr.io: $body"
    tail -n 1 "$LOGS/regtoken-ghcr.log" | tee /dev/stderr | grep "POST /token .*oauth user=$GUSER_NAME granted=\[$scope\]" >/dev/null ||
        fail "the ghcr-like token server did not grant $scope to $GUSER_NAME"
    expect_eq "owner/private with that token (path prefix)" \
        "$(manifest_digest "http://$RELAY/v2/ghcr.io/owner/private/manifests/1" "$tok")" "${EXP_TOP[gprivate]}"
    # docker's realm (/token, what a client learnt from /v2/) with a ghcr.io/ scope
    tok=$(cu -v --fail-with-body -G "http://$RELAY/token" -u "$GUSER_NAME:$GUSER_PASS" \
        --data-urlencode "service=$SERVICE" --data-urlencode "scope=repository:ghcr.io/owner/private:pull" |
        jq -er .token)
    tail -n 1 "$LOGS/regtoken-ghcr.log" | tee /dev/stderr | grep "user=$GUSER_NAME granted=\[$scope\]" >/dev/null ||
        fail "/token with a ghcr.io/ scope did not reach the ghcr-like token server"
    expect_eq "owner/private with that token (path prefix)" \
        "$(manifest_digest "http://$RELAY/v2/ghcr.io/owner/private/manifests/1" "$tok")" "${EXP_TOP[gprivate]}"
    # plain /token on the host route
    tok=$(cu -v --fail-with-body -G "http://$RELAY2/token" -u "$GUSER_NAME:$GUSER_PASS" \
        --data-urlencode "scope=$scope" | jq -er .token)
    expect_eq "owner/private with that token (host route)" \
        "$(manifest_digest "http://$RELAY2/v2/owner/private/manifests/1" "$tok")" "${EXP_TOP[gprivate]}"
    code=$(cu -v -o /dev/null -w '%{http_code}' -u "$GUSER_NAME:nope" "http://$RELAY2/token?scope=$scope")
    expect_eq "wrong password, host route" "$code" 401
    code=$(cu -v -o /dev/null -w '%{http_code}' -u "$GUSER_NAME:$GUSER_PASS" \
        "http://$RELAY/token?service=$SERVICE&scope=repository:private/secret:pull")
    expect_eq "$GUSER_NAME on docker.io's token service" "$code" 401
    # anonymous: no pull of owner/private granted, so the registry says 401
    ch=$(challenge_of "http://$RELAY/v2/ghcr.io/owner/private/manifests/1")
    tok=$(token_via "$ch")
    code=$(cu -v -o /dev/null -w '%{http_code}' "${ACCEPT[@]}" -H "Authorization: Bearer $tok" \
        "http://$RELAY/v2/ghcr.io/owner/private/manifests/1")
    expect_eq "anonymous token on owner/private" "$code" 401
    relay_alive
}

s_g_path() {
    sk_pull gtool g-tool-path "${HTTP_SRC[@]}" "docker://$RELAY/ghcr.io/owner/tool:1.0"
    sk_pull gmulti g-multi-path --all "${TLS_SRC[@]}" "docker://$RELAYTLS/ghcr.io/owner/multi:latest"
}
s_g_host() {
    sk_pull gtool g-tool-host "${HTTP_SRC[@]}" "docker://$RELAY2/owner/tool:1.0"
    sk_pull gmulti g-multi-host --all "${TLS_SRC[@]}" "docker://$RELAY2TLS/owner/multi:latest"
}

s_tags() { # skopeo list-tags: tags/list through each route
    local ref want out
    for ref in "$RELAYTLS/ghcr.io/owner/tool=1.0" "$RELAY2TLS/owner/tool=1.0" "$RELAYTLS/small=latest" \
        "$RELAYTLS/docker.io/library/multi=latest"; do
        want=${ref#*=}
        out=$(sk list-tags --retry-times 0 --cert-dir "$WORK/certs.d" "docker://${ref%=*}")
        echo "$out"
        jq -e --arg t "$want" '.Tags == [$t]' <<<"$out" >/dev/null || fail "tags of ${ref%=*}: want [$want]"
    done
}

p_fresh() { # podman forgets every image, so that the next pull fetches every blob again
    pm rmi -a -f >/dev/null 2>&1 || true
    if [[ -n $(pm images -q) ]]; then
        pm images
        fail "podman still has images"
    fi
}
p_g_path() {
    p_fresh
    p_pull gtool "$RELAY/ghcr.io/owner/tool:1.0" --tls-verify=false
    p_pull gmulti "$RELAYTLS/ghcr.io/owner/multi:latest" --cert-dir "$WORK/certs.d"
}
p_g_host() {
    p_fresh
    p_pull gtool "$RELAY2/owner/tool:1.0" --tls-verify=false
    p_pull gmulti "$RELAY2TLS/owner/multi:latest" --cert-dir "$WORK/certs.d"
}

# p_mirror IMAGE REF MIRROR-LOCATION: podman pulls REF (ghcr.io/...) with a registries.conf
# whose ghcr.io location is blocked (nothing listens there) and whose only mirror is ocirelay.
p_mirror() {
    local img=$1 ref=$2 mirror=$3 conf log mark path digest id urls
    conf=$WORK/containers/registries-${mirror//[^A-Za-z0-9]/_}.conf
    log=$WORK/podman-mirror-${mirror//[^A-Za-z0-9]/_}.log
    cat >"$conf" <<EOF
unqualified-search-registries = []
short-name-mode = "disabled"

[[registry]]
prefix = "ghcr.io"
location = "$IP_GREG:$P_GCLOSED"

[[registry.mirror]]
location = "$mirror"
insecure = true
EOF
    cat "$conf"
    p_fresh
    mark=$(wc -l <"$GHCR_REG_LOG")
    if ! CONTAINERS_REGISTRIES_CONF=$conf pm --log-level=debug pull "$ref" >"$log" 2>&1; then
        grep -E 'level=(debug|info|warning|error)' "$log" | grep -vE 'msg="(Cached value|Using|Initializ|Set|Setting|Storage|graph|overlay|Reading|Merged|Not|No |Found|\[graphdriver)' | tail -n 40
        fail "podman pull $ref through the mirror failed (full debug log: $log)"
    fi
    relay_alive
    # every registry request podman made went to ocirelay, through the mirror's location
    urls=$(grep -oE 'msg="(GET|HEAD|Ping) https?://[^ "]*' "$log" | sed -E 's/^msg="[A-Za-z]+ //' | sort -u)
    echo "podman's requests:"
    echo "$urls"
    path=${mirror#*/}
    [[ $path == "$mirror" ]] && path=""
    grep -q "^http://${mirror%%/*}/v2/${path:+$path/}${IMG_REPO[$img]}/manifests/" <<<"$urls" ||
        fail "no manifest request to the mirror http://${mirror%%/*}/v2/${path:+$path/}${IMG_REPO[$img]}/"
    if grep -v "^https\?://${mirror%%/*}/" <<<"$urls"; then
        fail "podman sent the requests above somewhere else than the mirror"
    fi
    # and ocirelay took them to the ghcr-like upstream
    tail -n +"$((mark + 1))" "$GHCR_REG_LOG" >"$log.upstream"
    grep "/v2/${IMG_REPO[$img]}/manifests/" "$log.upstream" ||
        fail "the ghcr-like upstream saw no manifest request for ${IMG_REPO[$img]}"
    digest=$(CONTAINERS_REGISTRIES_CONF=$conf pm image inspect --format '{{.Digest}}' "$ref")
    id=$(CONTAINERS_REGISTRIES_CONF=$conf pm image inspect --format '{{.Id}}' "$ref")
    expect_eq "podman image digest" "$digest" "${EXP_TOP[$img]}"
    expect_eq "podman image id (config digest)" "sha256:$id" "${EXP_CONFIG[$img]}"
}
p_g_mirror_path() { p_mirror gtool ghcr.io/owner/tool:1.0 "$RELAY/ghcr.io"; }
p_g_mirror_host() { p_mirror gmulti ghcr.io/owner/multi:latest "$RELAY2"; }

# ---- docker login equivalents: credentials stored for the mirror host, then a private pull

# expect_refused WHAT CMD...: CMD must fail, and for want of authorization (not, say, TLS)
expect_refused() {
    local what=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    echo "$out" | tail -n 5
    ((rc != 0)) || fail "$what succeeded"
    grep -qiE 'unauthori[sz]ed|authentication required|invalid username|denied|401' <<<"$out" ||
        fail "$what failed, but not for want of authorization"
    echo "ok: $what refused"
}

# (Negative cases use the TLS listeners: on the plain ones every insecure client call first
# probes https, which costs 10 s while ocirelay ignores the TLS ClientHello, see r_tls_probe.)
l_skopeo_login() { # on the TLS listener (podman logs in on a plain one below)
    local af=$WORK/auth-skopeo.json
    rm -f "$af"
    expect_refused "skopeo login with a wrong password" \
        sk login --authfile "$af" --cert-dir "$WORK/certs.d" -u "$USER_NAME" -p nope "$RELAYTLS"
    sk login --authfile "$af" --cert-dir "$WORK/certs.d" -u "$USER_NAME" -p "$USER_PASS" "$RELAYTLS"
    jq -e --arg k "$RELAYTLS" '.auths[$k].auth' "$af" >/dev/null || fail "no credentials for $RELAYTLS in $af"
    sk_pull secret secret-login "${TLS_SRC[@]}" --src-authfile "$af" "docker://$RELAYTLS/private/secret:latest"
    sk_pull gprivate gprivate-login-path "${TLS_SRC[@]}" --src-authfile "$af" \
        "docker://$RELAYTLS/ghcr.io/owner/private:1"
    grep "user=$USER_NAME granted=\[repository:owner/private:pull\]" "$LOGS/regtoken-ghcr.log" | tail -n 1 |
        grep . || fail "the ghcr-like token server never granted owner/private to $USER_NAME"
    sk logout --authfile "$af" "$RELAYTLS"
    expect_refused "skopeo pull of ghcr.io/owner/private after logout" \
        sk inspect --raw --retry-times 0 --authfile "$af" --cert-dir "$WORK/certs.d" \
        "docker://$RELAYTLS/ghcr.io/owner/private:1"
}

l_podman_login_host() {
    local af=$WORK/auth-podman-host.json af2=$WORK/auth-podman-hub.json cd=(--cert-dir "$WORK/certs.d")
    rm -f "$af" "$af2"
    p_fresh
    expect_refused "anonymous podman pull of owner/private" pm pull "${cd[@]}" "$RELAY2TLS/owner/private:1"
    expect_refused "podman login with a wrong password" \
        pm login --authfile "$af" "${cd[@]}" -u "$GUSER_NAME" -p nope "$RELAY2TLS"
    # octo exists only on the ghcr-like upstream: the same login on the docker.io host fails
    expect_refused "podman login as $GUSER_NAME on the docker.io host" \
        pm login --authfile "$af2" "${cd[@]}" -u "$GUSER_NAME" -p "$GUSER_PASS" "$RELAYTLS"
    pm login --authfile "$af" --tls-verify=false -u "$GUSER_NAME" -p "$GUSER_PASS" "$RELAY2"
    p_pull gprivate "$RELAY2/owner/private:1" --tls-verify=false --authfile "$af"
    grep "user=$GUSER_NAME granted=\[repository:owner/private:pull\]" "$LOGS/regtoken-ghcr.log" | tail -n 1 |
        grep . || fail "the ghcr-like token server never granted owner/private to $GUSER_NAME"
}

# Per-registry credentials for one mirror host: containers' auth.json may key an entry by
# host/namespace, so ghcr.io/... on the mirror gets octo while docker.io images get alice.
# (A login cannot write such an entry here: it checks the credentials with the host's /v2/,
# which is docker.io's.) ocirelay must send each to the right token service.
l_namespaced_auth() {
    local af=$WORK/auth-namespaced.json mark
    jq -n --arg hub "$RELAYTLS" --arg gh "$RELAYTLS/ghcr.io" \
        --arg a "$(printf %s "$USER_NAME:$USER_PASS" | base64 -w0)" \
        --arg o "$(printf %s "$GUSER_NAME:$GUSER_PASS" | base64 -w0)" \
        '{auths: {($hub): {auth: $a}, ($gh): {auth: $o}}}' >"$af"
    cat "$af"
    mark=$(wc -l <"$LOGS/regtoken-ghcr.log")
    sk_pull gprivate gprivate-namespaced "${TLS_SRC[@]}" --src-authfile "$af" \
        "docker://$RELAYTLS/ghcr.io/owner/private:1"
    tail -n +"$((mark + 1))" "$LOGS/regtoken-ghcr.log" >"$WORK/namespaced-tokens.log"
    cat "$WORK/namespaced-tokens.log"
    grep "user=$GUSER_NAME granted=\[repository:owner/private:pull\]" "$WORK/namespaced-tokens.log" ||
        fail "the ghcr-like token server did not see $GUSER_NAME"
    if grep "user=$USER_NAME" "$WORK/namespaced-tokens.log"; then
        fail "$USER_NAME's docker.io credentials went to the ghcr-like token server"
    fi
    mark=$(wc -l <"$LOGS/regtoken.log")
    sk_pull secret secret-namespaced "${TLS_SRC[@]}" --src-authfile "$af" "docker://$RELAYTLS/private/secret:latest"
    tail -n +"$((mark + 1))" "$LOGS/regtoken.log" | grep "user=$USER_NAME granted=\[repository:private/secret:pull\]" ||
        fail "docker.io's token server did not see $USER_NAME"
}

l_podman_login_tls() {
    local af=$WORK/auth-podman-tls.json
    rm -f "$af"
    p_fresh
    pm login --authfile "$af" --cert-dir "$WORK/certs.d" -u "$USER_NAME" -p "$USER_PASS" "$RELAYTLS"
    p_pull gprivate "$RELAYTLS/ghcr.io/owner/private:1" --cert-dir "$WORK/certs.d" --authfile "$af"
    p_pull secret "$RELAYTLS/private/secret:latest" --cert-dir "$WORK/certs.d" --authfile "$af"
}

# containerd: a private daemon; ctr pulls in-process and unpacks with the native snapshotter
start_containerd() {
    local d=$WORK/containerd i
    mkdir -p "$d/root" "$d/state" "$d/opt" "$d/hosts/docker.io" "$d/hosts/$RELAYTLS" \
        "$d/hosts/ghcr.io" "$d/hosts-relay2/ghcr.io"
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = "$d/debug.sock"
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
    # docker.io served by ocirelay only (containerd appends ?ns=docker.io for mirrors)
    cat >"$d/hosts/docker.io/hosts.toml" <<EOF
server = "http://$RELAY"
[host."http://$RELAY"]
  capabilities = ["pull", "resolve"]
EOF
    # ghcr.io through ocirelay: containerd appends ?ns=ghcr.io; the server is never asked
    cat >"$d/hosts/ghcr.io/hosts.toml" <<EOF
server = "https://ghcr.io"
[host."http://$RELAY"]
  capabilities = ["pull", "resolve"]
EOF
    # the same through ocirelay's host route (Host and ?ns= agree)
    cat >"$d/hosts-relay2/ghcr.io/hosts.toml" <<EOF
server = "https://ghcr.io"
[host."http://$RELAY2"]
  capabilities = ["pull", "resolve"]
EOF
    cat >"$d/hosts/$RELAYTLS/hosts.toml" <<EOF
server = "https://$RELAYTLS"
[host."https://$RELAYTLS"]
  capabilities = ["pull", "resolve"]
  ca = "$CERTS/ca.pem"
EOF
    start containerd containerd --config "$d/config.toml"
    for ((i = 0; i < 100; i++)); do
        if [[ -S $d/containerd.sock ]] && ct version >/dev/null 2>&1; then
            return 0
        fi
        alive containerd || { tail -n 30 "$LOGS/containerd.log" >&2; die "containerd exited"; }
        sleep 0.2
    done
    die "containerd did not come up in 20s"
}

c_pull() { # c_pull IMAGE REF CTR-PULL-ARGS...
    local img=$1 ref=$2
    shift 2
    ct images pull --snapshotter native "$@" "$ref"
    c_verify "$img" "$ref"
}
c_verify() { # c_verify IMAGE REF: containerd holds REF, complete, with the expected digests
    local img=$1 ref=$2 got layer
    relay_alive
    ct images ls
    got=$(ct images ls | awk -v r="$ref" '$1 == r { print $3 }')
    expect_eq "containerd image digest" "$got" "${EXP_TOP[$img]}"
    layer=${EXP_LAYER[$img]}
    got=$(ct content get "$layer" | sha256sum | cut -d' ' -f1)
    expect_eq "containerd layer content" "sha256:$got" "$layer"
    ct images check | grep -F "$ref"
    ct images check | grep -F "$ref" | grep -q complete || fail "image not complete in containerd"
}
c_small_plain() { c_pull small "$RELAY/library/small:latest" --plain-http; }
c_multi_mirror() {
    c_pull multi docker.io/library/multi:latest --hosts-dir "$WORK/containerd/hosts"
    # the same again with ctr's debug log, to show that it asked ocirelay with ?ns=docker.io
    ct images rm docker.io/library/multi:latest
    ct --debug images pull --snapshotter native --hosts-dir "$WORK/containerd/hosts" \
        docker.io/library/multi:latest >"$WORK/ctr-debug.log" 2>&1 || { cat "$WORK/ctr-debug.log"; fail "pull with --debug"; }
    grep -m 3 -E 'ns=docker.io' "$WORK/ctr-debug.log"
    grep -q "$RELAY/v2/library/multi/manifests/latest?ns=docker.io" "$WORK/ctr-debug.log" ||
        fail "containerd did not ask ocirelay with ?ns=docker.io (see $WORK/ctr-debug.log)"
    if grep -E 'https?://[^ "]*' -o "$WORK/ctr-debug.log" | grep -v "//$RELAY/"; then
        fail "containerd contacted a host other than ocirelay"
    fi
}
c_small_tls_short() { c_pull small "$RELAYTLS/small:latest" --hosts-dir "$WORK/containerd/hosts"; }
# with credentials containerd asks for tokens with an OAuth2 POST (grant_type=password)
c_private() {
    if ct images pull --snapshotter native --plain-http "$RELAY/private/secret:latest"; then
        fail "anonymous containerd pull of private/secret succeeded"
    fi
    echo "ok: anonymous pull refused"
    c_pull secret "$RELAY/private/secret:latest" --plain-http --user "$USER_NAME:$USER_PASS"
    grep -q 'POST /token .*oauth user=alice' "$LOGS/regtoken.log" ||
        fail "no OAuth2 POST reached the token server"
    grep 'oauth user=alice' "$LOGS/regtoken.log" | tail -n 2
}

# c_debug_pull IMAGE REF HOSTS-DIR RELAY-HOST [CTR-PULL-ARGS...]: ctr --debug pull through a
# hosts.toml mirror; every URL ctr used is on RELAY-HOST, the manifest asked with ?ns=ghcr.io.
c_debug_pull() {
    local img=$1 ref=$2 hosts=$3 relay=$4 log
    shift 4
    log=$WORK/ctr-debug-${img}.log
    ct --debug images pull --snapshotter native --hosts-dir "$hosts" "$@" "$ref" >"$log" 2>&1 ||
        { tail -n 40 "$log"; fail "ctr pull $ref (log: $log)"; }
    grep -m 3 -E 'ns=ghcr.io' "$log"
    grep -q "$relay/v2/${IMG_REPO[$img]}/manifests/${IMG_TAG[$img]:-latest}?ns=ghcr.io" "$log" ||
        fail "containerd did not ask ocirelay ($relay) with ?ns=ghcr.io (see $log)"
    if grep -E 'https?://[^ "]*' -o "$log" | grep -v "//$relay/"; then
        fail "containerd contacted a host other than ocirelay"
    fi
    c_verify "$img" "$ref"
}
c_g_mirror() { c_debug_pull gtool ghcr.io/owner/tool:1.0 "$WORK/containerd/hosts" "$RELAY"; }
c_g_mirror_host() { c_debug_pull gmulti ghcr.io/owner/multi:latest "$WORK/containerd/hosts-relay2" "$RELAY2"; }
c_g_private() {
    expect_refused "anonymous containerd pull of ghcr.io/owner/private" \
        ct images pull --snapshotter native --hosts-dir "$WORK/containerd/hosts" ghcr.io/owner/private:1
    c_debug_pull gprivate ghcr.io/owner/private:1 "$WORK/containerd/hosts" "$RELAY" \
        --user "$GUSER_NAME:$GUSER_PASS"
    grep "POST /token .*oauth user=$GUSER_NAME" "$LOGS/regtoken-ghcr.log" | tail -n 2 | grep . ||
        fail "no OAuth2 POST as $GUSER_NAME reached the ghcr-like token server"
}

say "checking ocirelay"
check "relay: /v2/ challenge realm rewritten to ocirelay" r_challenge
check "relay: token pass-through (GET, one-component name, OAuth2 POST, bad password)" r_token
check "relay: manifest HEAD/GET headers and digests (library/ and short name)" r_manifest
check "relay: blob HEAD/GET/Range via the 307 to the CDN" r_blob
check "relay: manifest HEAD stays a HEAD upstream" r_head_stays_head
check "relay: plain listener turns down a TLS ClientHello at once (insecure clients probe https)" r_tls_probe
check "skopeo: library/small over HTTP" s_small_http
check "skopeo: small (no library/) over HTTP" s_small_http_short
check "skopeo: library/small over TLS" s_small_tls
check "skopeo: small (no library/) over TLS" s_small_tls_short
check "skopeo: --all library/multi over HTTP" s_multi_http
check "skopeo: --all multi (no library/) over TLS" s_multi_tls_short
check "skopeo: library/big (${BIG_MB} MiB layer) over HTTP" s_big_http
check "skopeo: big (no library/) over TLS" s_big_tls_short
check "relay: Range reads inside the ${BIG_MB} MiB layer (HTTP and TLS)" r_big_range
check "relay: clients hanging up mid-blob" r_client_abort
check "skopeo: 3 parallel pulls of big" s_big_parallel
check "skopeo: private/secret needs credentials (login pass-through)" s_private
check "podman: pull library/small over HTTP" p_small_http
check "podman: pull multi (no library/) over TLS" p_multi_tls
check "podman: private/secret needs --creds" p_private
check "relay ghcr: challenges by host route (port ignored), path prefix, ?ns=, default" r_g_challenge
check "relay ghcr: manifests by path prefix, host route, Host without/other port, ?ns=; docker.io/ prefix" r_g_manifest
check "relay ghcr: blob HEAD/GET/Range via the 307 to its own CDN (own ca_file)" r_g_blob
check "relay ghcr: tokens reach the ghcr-like token service (path, Host, scope prefix)" r_g_token
check "skopeo ghcr: $RELAY/ghcr.io/owner/tool + --all owner/multi (TLS), path prefix" s_g_path
check "skopeo ghcr: $RELAY2/owner/tool + --all owner/multi (TLS), host route" s_g_host
check "skopeo: list-tags by path prefix, host route, short and docker.io/ names" s_tags
check "podman ghcr: pull by path prefix (HTTP tool, TLS multi)" p_g_path
check "podman ghcr: pull by host route (HTTP tool, TLS multi)" p_g_host
check "podman ghcr: registries.conf mirror $RELAY/ghcr.io for ghcr.io (upstream blocked)" p_g_mirror_path
check "podman ghcr: registries.conf mirror $RELAY2 for ghcr.io (upstream blocked)" p_g_mirror_host
check "login: skopeo login $RELAYTLS as $USER_NAME, private/secret + ghcr.io/owner/private" l_skopeo_login
check "login: podman login $RELAY2 (HTTP) as $GUSER_NAME (ghcr-only user), owner/private" l_podman_login_host
check "login: podman login $RELAYTLS (TLS) as $USER_NAME, both private images" l_podman_login_tls
check "login: auth.json with $RELAYTLS (alice) and $RELAYTLS/ghcr.io (octo) entries" l_namespaced_auth
start_containerd
check "containerd: ctr pull --plain-http library/small" c_small_plain
check "containerd: ctr pull docker.io/library/multi via hosts.toml mirror (?ns=)" c_multi_mirror
check "containerd: ctr pull small (no library/) over TLS" c_small_tls_short
check "containerd: private/secret with --user (OAuth2 POST token)" c_private
check "containerd ghcr: ghcr.io/owner/tool via hosts.toml mirror $RELAY (?ns=ghcr.io)" c_g_mirror
check "containerd ghcr: ghcr.io/owner/multi via hosts.toml mirror $RELAY2 (host route + ?ns=)" c_g_mirror_host
check "containerd ghcr: ghcr.io/owner/private with --user $GUSER_NAME via the mirror" c_g_private
check "relay: expired CDN redirect is not reused" r_redirect_expiry
check "relay: no Authorization header ever reached either CDN" r_cdn_no_auth
start_haproxy
check "load balancer: the client's address through HAProxy's PROXY v1 and v2 (TLS) headers" lb_client_address
check "load balancer: skopeo library/small over TLS through HAProxy" lb_skopeo
check "load balancer: a stranger's PROXY header and a header-less trusted proxy are refused" lb_refusals
check "relay: still running at the end" relay_alive

# ---- the content cache, with real clients: a second ocirelay with the cache on pulls
# everything once, then again; the second pass must cost no upstream blob or manifest
# request (counted from the registry's and the CDN's own nginx logs).
pick_port P_CRELAY
CRELAY=$IP_RELAY:$P_CRELAY
cat >"$WORK/ocirelay-cache.toml" <<EOF
listen = ["$CRELAY"]
workers = 2

[[registry]]
name = "docker.io"
upstream = "https://$REG"
ca_file = "$CERTS/ca.pem"
default = true

[cache]
dir = "$WORK/cache"
tag_ttl = "1h"
EOF
start ocirelay-cache "$OCIRELAY_BIN" --config "$WORK/ocirelay-cache.toml"
crelay_listens() { wait_tcp ocirelay-cache "$IP_RELAY" "$P_CRELAY" 20; }
crelay_alive() { alive ocirelay-cache || fail "ocirelay-cache is not running any more (see $LOGS/ocirelay-cache.log)"; }
c1_pass() { # the first pass: everything through the cache, stored
    sk_pull small c1-small "${HTTP_SRC[@]}" "docker://$CRELAY/library/small:latest"
    sk_pull multi c1-multi --all "${HTTP_SRC[@]}" "docker://$CRELAY/library/multi:latest"
    sk_pull big c1-big "${HTTP_SRC[@]}" "docker://$CRELAY/library/big:latest"
    crelay_alive
}
upstream_lines_since() { # upstream_lines_since MARK_REG MARK_CDN: new registry and CDN log lines
    tail -n +"$(($1 + 1))" "$WORK/nginx-registry/access.log"
    tail -n +"$(($2 + 1))" "$WORK/nginx-cdn/access.log"
}
c2_pass() { # the second pass, three clients: no upstream blob or manifest request
    local reg cdn got
    reg=$(wc -l <"$WORK/nginx-registry/access.log")
    cdn=$(wc -l <"$WORK/nginx-cdn/access.log")
    sk_pull small c2-small "${HTTP_SRC[@]}" "docker://$CRELAY/library/small:latest"
    sk_pull multi c2-multi --all "${HTTP_SRC[@]}" "docker://$CRELAY/library/multi:latest"
    sk_pull big c2-big "${HTTP_SRC[@]}" "docker://$CRELAY/library/big:latest"
    p_fresh
    p_pull small "$CRELAY/library/small:latest" --tls-verify=false
    p_pull big "$CRELAY/library/big:latest" --tls-verify=false
    c_pull small "$CRELAY/library/small:latest" --plain-http
    crelay_alive
    echo "upstream requests during the second pass:"
    upstream_lines_since "$reg" "$cdn" | tee "$WORK/cache-second-pass.log"
    got=$(grep -cE '"(GET|HEAD) [^ ]*/(blobs/|manifests/sha256:)[^ ]* HTTP[^"]*" 200' "$WORK/cache-second-pass.log" || true)
    expect_eq "upstream blob and manifest-by-digest answers in the second pass" "$got" 0
    got=$(grep -cE '"(GET|HEAD) [^ ]*/manifests/[^s][^ ]* HTTP[^"]*" 200' "$WORK/cache-second-pass.log" || true)
    expect_eq "upstream manifest-by-tag answers in the second pass (tag_ttl 1h)" "$got" 0
    grep -q 'cache=hit' "$LOGS/ocirelay-cache.log" || fail "no cache=hit in the access log"
}
check "cache: ocirelay with the cache listens on $CRELAY" crelay_listens
check "cache: first pass (skopeo small, --all multi, big ${BIG_MB} MiB) is stored" c1_pass
check "cache: second pass (skopeo, podman, containerd) costs no upstream blob or manifest request" c2_pass

# Offline: the same cache directory, a new ocirelay whose docker.io upstream is a dead
# address (nothing listens there): the whole pull, token step included, from the cache.
pick_port P_DEAD
pick_port P_ORELAY
ORELAY=$IP_RELAY:$P_ORELAY
# (started here, not inside a check: checks run in subshells, and the process table must
# know it for the cleanup)
stop ocirelay-cache
sed -e "s|^listen = .*|listen = [\"$ORELAY\"]|" \
    -e "s|^upstream = \"https://$REG\"|upstream = \"https://127.0.0.1:$P_DEAD\"|" \
    "$WORK/ocirelay-cache.toml" >"$WORK/ocirelay-offline.toml"
start ocirelay-offline "$OCIRELAY_BIN" --config "$WORK/ocirelay-offline.toml"
offline_start() {
    grep -q "127.0.0.1:$P_DEAD" "$WORK/ocirelay-offline.toml" || fail "the offline config still names the upstream"
    wait_tcp ocirelay-offline "$IP_RELAY" "$P_ORELAY" 20
}
offline_pull() {
    sk_pull small off-small "${HTTP_SRC[@]}" "docker://$ORELAY/library/small:latest"
    sk_pull multi off-multi --all "${HTTP_SRC[@]}" "docker://$ORELAY/library/multi:latest"
    sk_pull big off-big "${HTTP_SRC[@]}" "docker://$ORELAY/library/big:latest"
    p_fresh
    p_pull small "$ORELAY/library/small:latest" --tls-verify=false
    c_pull small "$ORELAY/library/small:latest" --plain-http
    alive ocirelay-offline || fail "ocirelay-offline is not running any more"
    grep -q "offline token" "$LOGS/ocirelay-offline.log" || fail "the token step did not come from the cache"
}
check "cache offline: ocirelay on the warm cache, upstream dead ($P_DEAD)" offline_start
check "cache offline: skopeo, podman and containerd pull everything cached, digests checked" offline_pull

# ---- the shared tier (issue 13), with real clients: a replicated SeaweedFS cluster on
# loopback (master with replication 001, three volume servers, filer, S3 gateway; separate
# processes) holds one bucket for three ocirelay nodes. A pulls through the real upstream and
# uploads; B (fresh disk, upstream dead) serves everything from the bucket; with one volume
# server killed, C (fresh disk, upstream dead) still pulls; with the whole cluster stopped,
# A serves from its disk and the upstream and says the tier is down.
WEED=${OCIRELAY_WEED:-}
if [[ -z $WEED ]]; then
    for w in /opt/ocirelay-venv/bin/weed "$(command -v weed || true)"; do
        [[ -n $w && -x $w ]] && WEED=$w && break
    done
fi
[[ -n $WEED ]] || die "no weed binary (SeaweedFS): set OCIRELAY_WEED or run tests/deps.sh"
S3_KEY=e2e-shared-key
S3_SECRET=e2e-shared-secret-0123456789
S3_BUCKET=mirror
SW=$WORK/seaweed
mkdir -p "$SW"/{master,filer,volume1,volume2,volume3}
for v in P_SWM P_SWMG P_SWF P_SWFG P_SWS P_SWSG P_SWV1 P_SWV1G P_SWV2 P_SWV2G P_SWV3 P_SWV3G; do
    pick_port "$v"
done
SW_MASTER=127.0.0.1:$P_SWM.$P_SWMG
printf '{"identities":[{"name":"ocirelay","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "$S3_KEY" "$S3_SECRET" >"$SW/s3.json"
SW_COMMON=(-ip=127.0.0.1 -ip.bind=127.0.0.1)
start weed-master "$WEED" master "${SW_COMMON[@]}" -port="$P_SWM" -port.grpc="$P_SWMG" \
    -mdir="$SW/master" -defaultReplication=001 -volumeSizeLimitMB=64
wait_tcp weed-master 127.0.0.1 "$P_SWM" 20
for i in 1 2 3; do
    vp=P_SWV$i
    vg=P_SWV${i}G
    start "weed-volume$i" "$WEED" volume "${SW_COMMON[@]}" -port="${!vp}" -port.grpc="${!vg}" \
        -dir="$SW/volume$i" -max=20 -minFreeSpace=1MiB -master="$SW_MASTER"
done
start weed-filer "$WEED" filer "${SW_COMMON[@]}" -port="$P_SWF" -port.grpc="$P_SWFG" \
    -defaultStoreDir="$SW/filer" -master="$SW_MASTER"
start weed-s3 "$WEED" s3 "${SW_COMMON[@]}" -port="$P_SWS" -port.grpc="$P_SWSG" \
    -filer="127.0.0.1:$P_SWF.$P_SWFG" -config="$SW/s3.json"
for i in 1 2 3; do
    vp=P_SWV$i
    wait_tcp "weed-volume$i" 127.0.0.1 "${!vp}" 20
done
wait_tcp weed-filer 127.0.0.1 "$P_SWF" 20
wait_tcp weed-s3 127.0.0.1 "$P_SWS" 20

# The nodes' ports are picked only now: the cluster's gRPC clients take ephemeral ports
# from the range pick_port draws from (a port picked before them was once taken).
for v in P_TA P_TAM P_TB P_TBM P_TC P_TCM P_TDEAD; do
    pick_port "$v"
done
# shared_node NAME LISTEN-PORT METRICS-PORT UPSTREAM: an ocirelay node on the bucket
shared_node() {
    cat >"$WORK/ocirelay-$1.toml" <<EOF
listen = ["$IP_RELAY:$2"]
workers = 2
metrics_listen = "$IP_RELAY:$3"

[[registry]]
name = "docker.io"
upstream = "$4"
ca_file = "$CERTS/ca.pem"
default = true

[cache]
dir = "$WORK/cache-$1"
tag_ttl = "1h"

[cache.s3]
endpoint = "http://127.0.0.1:$P_SWS"
bucket = "$S3_BUCKET"
access_key_id = "$S3_KEY"
secret_access_key = "$S3_SECRET"
EOF
    start "ocirelay-$1" "$OCIRELAY_BIN" --config "$WORK/ocirelay-$1.toml"
}
metric() { # metric METRICS-PORT NAME: the sum of the series' samples (0 if absent)
    curl -sf --max-time 5 "http://$IP_RELAY:$1/metrics" |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}
# wait_metric METRICS-PORT NAME OP VALUE SECS: until the metric compares so (bounded)
wait_metric() {
    local i v
    for ((i = 0; i < $5 * 5; i++)); do
        v=$(metric "$1" "$2" || echo -1)
        test "$v" "-$3" "$4" && return 0
        sleep 0.2
    done
    fail "$2 on :$1 is $v, wanted -$3 $4 within $5s"
}
sh_pull() { # sh_pull PREFIX RELAY: skopeo small, --all multi, big through RELAY, checked
    sk_pull small "$1-small" "${HTTP_SRC[@]}" "docker://$2/library/small:latest"
    sk_pull multi "$1-multi" --all "${HTTP_SRC[@]}" "docker://$2/library/multi:latest"
    sk_pull big "$1-big" "${HTTP_SRC[@]}" "docker://$2/library/big:latest"
}

sw_bucket() { # the cluster takes writes: the bucket is created (bounded retries)
    local i out
    for ((i = 0; i < 30; i++)); do
        out=$(echo "s3.bucket.create -name $S3_BUCKET" | timeout 20 "$WEED" shell -master="$SW_MASTER" 2>&1 || true)
        if echo "s3.bucket.list" | timeout 20 "$WEED" shell -master="$SW_MASTER" 2>&1 | grep -q "$S3_BUCKET"; then
            return 0
        fi
        sleep 1
    done
    echo "$out"
    fail "bucket $S3_BUCKET not created"
}
check "shared tier: SeaweedFS (master, 3 volume servers, filer, S3) on loopback, bucket $S3_BUCKET" sw_bucket

shared_node shared-a "$P_TA" "$P_TAM" "https://$REG"
shared_a() {
    wait_tcp ocirelay-shared-a "$IP_RELAY" "$P_TA" 20
    sh_pull sha "$IP_RELAY:$P_TA"
    alive ocirelay-shared-a || fail "ocirelay-shared-a is not running any more"
    wait_metric "$P_TAM" ocirelay_shared_tier_uploads_total gt 0 60
    wait_metric "$P_TAM" ocirelay_shared_tier_uploads_pending eq 0 90
    echo "A uploaded $(metric "$P_TAM" ocirelay_shared_tier_uploads_total) objects"
}
check "shared tier: node A pulls through the upstream (skopeo small, --all multi, big) and uploads all" shared_a

shared_node shared-b "$P_TB" "$P_TBM" "https://127.0.0.1:$P_TDEAD"
shared_b() {
    wait_tcp ocirelay-shared-b "$IP_RELAY" "$P_TB" 20
    local b=$IP_RELAY:$P_TB
    sh_pull shb "$b"
    p_fresh
    p_pull small "$b/library/small:latest" --tls-verify=false
    c_pull small "$b/library/small:latest" --plain-http
    alive ocirelay-shared-b || fail "ocirelay-shared-b is not running any more"
    wait_metric "$P_TBM" ocirelay_shared_tier_blob_hits_total gt 0 5
    echo "B blob hits: $(metric "$P_TBM" ocirelay_shared_tier_blob_hits_total)"
    grep -q "offline token" "$LOGS/ocirelay-shared-b.log" || fail "B's token step did not come from the cache"
}
check "shared tier: node B (fresh disk, upstream dead) serves skopeo, podman and ctr from the bucket" shared_b

stop weed-volume3
shared_node shared-c "$P_TC" "$P_TCM" "https://127.0.0.1:$P_TDEAD"
shared_c() {
    ! alive weed-volume3 || fail "volume server 3 still runs"
    wait_tcp ocirelay-shared-c "$IP_RELAY" "$P_TC" 20
    sk_pull small shc-small "${HTTP_SRC[@]}" "docker://$IP_RELAY:$P_TC/library/small:latest"
    wait_metric "$P_TCM" ocirelay_shared_tier_blob_hits_total gt 0 5
}
check "shared tier: one volume server killed, node C (fresh disk, upstream dead) pulls small from the bucket" shared_c

stop weed-s3
stop weed-filer
stop weed-volume2
stop weed-volume1
stop weed-master
shared_down() {
    local i ready=
    sk_pull small shd-small "${HTTP_SRC[@]}" "docker://$IP_RELAY:$P_TA/library/small:latest"
    sk_pull big shd-big "${HTTP_SRC[@]}" "docker://$IP_RELAY:$P_TA/library/big:latest"
    for ((i = 0; i < 100; i++)); do
        ready=$(curl -s --max-time 5 "http://$IP_RELAY:$P_TAM/readyz" || true)
        grep -q '^shared_tier: ok (down' <<<"$ready" && break
        sleep 0.2
    done
    echo "$ready"
    grep -q '^shared_tier: ok (down' <<<"$ready" || fail "A's /readyz does not say the shared tier is down"
    wait_metric "$P_TAM" ocirelay_shared_tier_up eq 0 20
    alive ocirelay-shared-a || fail "ocirelay-shared-a is not running any more"
}
check "shared tier: whole cluster stopped, node A serves from disk and upstream; /readyz and metrics say down" shared_down

summary_and_exit
