#!/usr/bin/env bash
# End-to-end test of ocirelay against real registry software, all on loopback.
#
#   upstream "Docker Hub", built from real parts:
#     https://127.0.0.11:P_REG   nginx (TLS) -> docker-registry 2.8 (auth: token) on 127.0.0.14
#                                blob GETs answered by a 307 to a signed, expiring CDN URL
#     https://127.0.0.12:P_AUTH  regtoken: JWT token server (GET + OAuth2 POST /token)
#     https://127.0.0.13:P_CDN   nginx (TLS) serving the registry's blob files, secure_link,
#                                400 on any Authorization header (like Cloudflare R2)
#   under test:
#     http://127.0.0.1:P_RELAY, https://127.0.0.1:P_RELAYTLS   ocirelay
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
    local name=$1 log
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
        echo "PASS $name"
    else
        NFAIL=$((NFAIL + 1))
        echo "FAIL $name   (log: $log)"
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
# cu ARGS: curl with the test CA, bounded, verbose to stderr.
cu() {
    timeout -k 5 120 curl --silent --show-error --cacert "$CERTS/ca.pem" --noproxy '*' \
        --max-time 110 "$@"
}

# ---------------------------------------------------------------- expectations

declare -A EXP_TOP     # image -> top manifest (or index) digest
declare -A EXP_HOST    # image -> the linux/amd64 manifest digest (= EXP_TOP for single images)
declare -A EXP_CONFIG  # image -> linux/amd64 config digest
declare -A EXP_BLOBS   # image -> space separated hex of every blob (configs, layers)
declare -A EXP_CHILD   # image -> space separated hex of child manifests (indexes only)
declare -A EXP_LAYER   # image -> digest of the first layer of the amd64 image
declare -A IMG_REPO    # image -> repository on the upstream
IMG_REPO=([small]=library/small [multi]=library/multi [big]=library/big
    [secret]=private/secret [late]=library/late)

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
for tool in docker-registry nginx skopeo podman containerd ctr curl jq tar gzip sha256sum ss timeout; do
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
REG=$IP_REG:$P_REG
RELAY=$IP_RELAY:$P_RELAY
RELAYTLS=$IP_RELAY:$P_RELAYTLS
CDN_SECRET=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')

say "generating certificates"
"$REGTOKEN" gen-certs "$CERTS" "registry=$IP_REG" "auth=$IP_AUTH" "cdn=$IP_CDN" \
    "relay=$IP_RELAY,localhost" || die "regtoken gen-certs failed"
mkdir -p "$WORK/out" "$WORK/certs.d" "$WORK/home" "$WORK/containers" "$WORK/podman"/{root,run,tmp}
cp "$CERTS/ca.pem" "$WORK/certs.d/ca.crt"
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
wait_tcp regtoken "$IP_AUTH" "$P_AUTH" 15
wait_tcp regtoken "$IP_AUTH" "$P_SIGN" 5

# ---- docker-registry (plain HTTP on its own loopback address, reached only via nginx)
mkdir -p "$WORK/registry/data"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
  redirect:
    disable: false
middleware:
  storage:
    - name: redirect
      options:
        baseurl: https://$IP_CDN:$P_CDN
http:
  addr: $IP_BACK:$P_BACK
  host: https://$REG
  secret: e2e-$CDN_SECRET
auth:
  token:
    realm: https://$IP_AUTH:$P_AUTH/token
    service: $SERVICE
    issuer: $ISSUER
    rootcertbundle: $CERTS/token-root.pem
EOF
start docker-registry docker-registry serve "$WORK/registry/config.yml"
wait_tcp docker-registry "$IP_BACK" "$P_BACK" 20

# ---- nginx: two instances, the registry host and the CDN host
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

nginx_conf registry "
    upstream distribution {
        server $IP_BACK:$P_BACK;
        keepalive 16;
    }
    server {
        listen $REG ssl;
        ssl_certificate $CERTS/registry-fullchain.pem;
        ssl_certificate_key $CERTS/registry-key.pem;
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-For \$remote_addr;
        proxy_set_header Connection \"\";

        location / {
            proxy_pass http://distribution;
        }
        # Blob downloads: the registry answers 307 to the CDN; regtoken signs that URL
        # (nginx secure_link: md5 + expires), like Docker Hub's expiring CDN links.
        location ~ \"^/v2/.+/blobs/sha256:[0-9a-f]{64}\$\" {
            proxy_pass http://distribution;
            proxy_intercept_errors on;
            error_page 307 = @sign;
        }
        location @sign {
            set \$blob_location \$upstream_http_location;
            rewrite ^ /sign break;
            proxy_pass http://$IP_AUTH:$P_SIGN;
            proxy_pass_request_body off;
            proxy_set_header Content-Length \"\";
            proxy_set_header X-Location \$blob_location;
            proxy_set_header Authorization \"\";
            add_header Docker-Distribution-Api-Version registry/2.0 always;
        }
    }"

nginx_conf cdn "
    server {
        listen $IP_CDN:$P_CDN ssl;
        ssl_certificate $CERTS/cdn-fullchain.pem;
        ssl_certificate_key $CERTS/cdn-key.pem;
        root $WORK/registry/data;

        location /docker/registry/v2/blobs/ {
            if (\$http_authorization) {
                return 400 '<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code><Message>Authorization header is not allowed on a presigned URL</Message></Error>\n';
            }
            secure_link \$arg_md5,\$arg_expires;
            secure_link_md5 \"\$secure_link_expires\$uri $CDN_SECRET\";
            if (\$secure_link = \"\") {
                return 403 'signature does not match\n';
            }
            if (\$secure_link = \"0\") {
                return 410 'signed URL expired\n';
            }
            add_header Cache-Control 'public, max-age=1209600' always;
        }
        location / {
            return 404 'not found\n';
        }
    }"

for n in registry cdn; do
    nginx -t -q -p "$WORK/nginx-$n" -c "$WORK/nginx-$n/nginx.conf" -e "$WORK/nginx-$n/error.log" \
        >"$LOGS/nginx-$n-test.log" 2>&1 ||
        { cat "$LOGS/nginx-$n-test.log" "$WORK/nginx-$n/error.log" >&2; die "nginx-$n config invalid"; }
    start "nginx-$n" nginx -p "$WORK/nginx-$n" -c "$WORK/nginx-$n/nginx.conf" \
        -e "$WORK/nginx-$n/error.log" -g 'daemon off;'
done
wait_tcp nginx-registry "$IP_REG" "$P_REG" 15
wait_tcp nginx-cdn "$IP_CDN" "$P_CDN" 15

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

# multi: an index over linux/amd64 and linux/arm64
oci_init "$OCI/multi"
mkroot "$OCI/src/multi-amd64" "multi for amd64"
mkroot "$OCI/src/multi-arm64" "multi for arm64"
read -r M_AMD_DG M_AMD_SZ <<<"$(oci_image "$OCI/multi" amd64 "$OCI/src/multi-amd64")"
read -r M_ARM_DG M_ARM_SZ <<<"$(oci_image "$OCI/multi" arm64 "$OCI/src/multi-arm64")"
read -r M_IDX_DG M_IDX_SZ <<<"$(oci_index "$OCI/multi" "amd64 $M_AMD_DG $M_AMD_SZ" "arm64 $M_ARM_DG $M_ARM_SZ")"
oci_tag "$OCI/multi" application/vnd.oci.image.index.v1+json "$M_IDX_DG" "$M_IDX_SZ" latest
EXP_TOP[multi]=$M_IDX_DG
EXP_HOST[multi]=$M_AMD_DG
EXP_CHILD[multi]="${M_AMD_DG#sha256:} ${M_ARM_DG#sha256:}"

for img in small secret late big multi; do
    EXP_BLOBS[$img]=$(oci_blobs_of "$OCI/$img" "${EXP_TOP[$img]}" | tr '\n' ' ')
    host_manifest=$OCI/$img/blobs/sha256/${EXP_HOST[$img]#sha256:}
    EXP_CONFIG[$img]=$(jq -r .config.digest "$host_manifest")
    EXP_LAYER[$img]=$(jq -r '.layers[0].digest' "$host_manifest")
    say "image $img: ${EXP_TOP[$img]} (blobs: ${EXP_BLOBS[$img]})"
done

say "seeding the upstream registry with skopeo (as $USER_NAME)"
for img in small secret late big multi; do
    all=()
    [[ $img == multi ]] && all=(--all)
    sk copy --quiet "${all[@]}" --preserve-digests --dest-creds "$USER_NAME:$USER_PASS" \
        --dest-cert-dir "$WORK/certs.d" "oci:$OCI/$img:latest" \
        "docker://$REG/${IMG_REPO[$img]}:latest" >"$LOGS/seed-$img.log" 2>&1 ||
        { cat "$LOGS/seed-$img.log" >&2; die "seeding $img failed"; }
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

say "checking the upstream harness directly (no ocirelay involved)"
check "upstream: /v2/ challenge" up_challenge
check "upstream: token server GET/POST and bad credentials" up_token_post
check "upstream: manifests as seeded (skopeo inspect)" up_inspect
check "upstream: skopeo copy small + multi --all straight from upstream" up_copy
check "upstream: private repo needs credentials" up_private
check "upstream: 307 to signed CDN, no-auth/expiry/range rules" up_cdn
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

cat >"$WORK/ocirelay.toml" <<EOF
listen = ["$RELAY"]

[[tls_listener]]
addr = "$RELAYTLS"
cert = "$CERTS/relay-fullchain.pem"
key = "$CERTS/relay-key.pem"

[[registry]]
name = "docker.io"
upstream = "https://$REG"
ca_file = "$CERTS/ca.pem"
default = true
EOF
CDN_LOG_MARK=$(wc -l <"$WORK/nginx-cdn/access.log")
start ocirelay "$OCIRELAY_BIN" --config "$WORK/ocirelay.toml"
relay_listens() {
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAY" 20
    wait_tcp ocirelay "$IP_RELAY" "$P_RELAYTLS" 5
}
check "ocirelay: starts and listens on $RELAY and $RELAYTLS" relay_listens
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

ACCEPT=(-H 'Accept: application/vnd.oci.image.index.v1+json' -H 'Accept: application/vnd.oci.image.manifest.v1+json'
    -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')

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

# The CDN must never have seen an Authorization header from ocirelay.
r_cdn_no_auth() {
    local n
    tail -n +"$((CDN_LOG_MARK + 1))" "$WORK/nginx-cdn/access.log" >"$WORK/cdn-relay.log"
    n=$(wc -l <"$WORK/cdn-relay.log")
    echo "CDN requests made while ocirelay was tested: $n"
    ((n > 0)) || fail "ocirelay never fetched from the CDN"
    if grep -v ' auth=- ' "$WORK/cdn-relay.log"; then
        fail "requests above reached the CDN with an Authorization header"
    fi
    if grep -E '" (400|403|410) ' "$WORK/cdn-relay.log"; then
        fail "the CDN refused the requests above"
    fi
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

# containerd: a private daemon; ctr pulls in-process and unpacks with the native snapshotter
start_containerd() {
    local d=$WORK/containerd i
    mkdir -p "$d/root" "$d/state" "$d/opt" "$d/hosts/docker.io" "$d/hosts/$RELAYTLS"
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
    local img=$1 ref=$2 got layer
    shift 2
    ct images pull --snapshotter native "$@" "$ref"
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
    grep -E 'ns=docker.io' "$WORK/ctr-debug.log" | head -n 3
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

say "checking ocirelay"
check "relay: /v2/ challenge realm rewritten to ocirelay" r_challenge
check "relay: token pass-through (GET, one-component name, OAuth2 POST, bad password)" r_token
check "relay: manifest HEAD/GET headers and digests (library/ and short name)" r_manifest
check "relay: blob HEAD/GET/Range via the 307 to the CDN" r_blob
check "relay: manifest HEAD stays a HEAD upstream" r_head_stays_head
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
start_containerd
check "containerd: ctr pull --plain-http library/small" c_small_plain
check "containerd: ctr pull docker.io/library/multi via hosts.toml mirror (?ns=)" c_multi_mirror
check "containerd: ctr pull small (no library/) over TLS" c_small_tls_short
check "containerd: private/secret with --user (OAuth2 POST token)" c_private
check "relay: expired CDN redirect is not reused" r_redirect_expiry
check "relay: no Authorization header ever reached the CDN" r_cdn_no_auth
check "relay: still running at the end" relay_alive

summary_and_exit
