# shellcheck shell=bash
# Offline OCI image layouts from plain files: tar + gzip + sha256sum, no network, no python.
# Sourced by run.sh. Every function prints results on stdout and fails loudly.

OCI_MTIME=@1700000000

# oci_init LAYOUT: an empty OCI image layout directory.
oci_init() {
    mkdir -p "$1/blobs/sha256"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$1/oci-layout"
}

# oci_put LAYOUT FILE: moves FILE into the layout's blob store; prints "sha256:HEX SIZE".
oci_put() {
    local layout=$1 file=$2 hex size
    hex=$(sha256sum "$file" | cut -d' ' -f1)
    size=$(stat -c %s "$file")
    mv -f "$file" "$layout/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

# oci_layer LAYOUT ROOTFS_DIR: a reproducible tar+gzip layer of ROOTFS_DIR.
# Prints "DIGEST SIZE DIFFID".
oci_layer() {
    local layout=$1 dir=$2 tmp diffid out
    tmp=$(mktemp "$layout/layer.XXXXXX")
    tar --sort=name --mtime="$OCI_MTIME" --owner=0 --group=0 --numeric-owner \
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$dir" -cf "$tmp.tar" .
    diffid=sha256:$(sha256sum "$tmp.tar" | cut -d' ' -f1)
    gzip -1 -n -c "$tmp.tar" >"$tmp"
    rm -f "$tmp.tar"
    out=$(oci_put "$layout" "$tmp")
    echo "$out $diffid"
}

# oci_image LAYOUT ARCH ROOTFS_DIR...: config + manifest for one platform, one layer per dir.
# Prints "MANIFEST_DIGEST MANIFEST_SIZE".
oci_image() {
    local layout=$1 arch=$2
    shift 2
    local layers="" diffids="" history="" d l dg sz di tmp cfg
    for d in "$@"; do
        l=$(oci_layer "$layout" "$d")
        read -r dg sz di <<<"$l"
        layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$dg\",\"size\":$sz}"
        diffids+="${diffids:+,}\"$di\""
        history+="${history:+,}{\"created\":\"2023-11-14T22:13:20Z\",\"created_by\":\"ocirelay e2e: $(basename "$d")\"}"
    done
    tmp=$(mktemp "$layout/config.XXXXXX")
    printf '{"created":"2023-11-14T22:13:20Z","architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"Labels":{"org.example.e2e":"ocirelay"}},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
        "$arch" "$diffids" "$history" >"$tmp"
    cfg=$(oci_put "$layout" "$tmp")
    read -r dg sz <<<"$cfg"
    tmp=$(mktemp "$layout/manifest.XXXXXX")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "$dg" "$sz" "$layers" >"$tmp"
    oci_put "$layout" "$tmp"
}

# oci_index LAYOUT "ARCH DIGEST SIZE"...: an image index over platform manifests.
# Prints "INDEX_DIGEST INDEX_SIZE".
oci_index() {
    local layout=$1
    shift
    local entries="" e arch dg sz tmp
    for e in "$@"; do
        read -r arch dg sz <<<"$e"
        entries+="${entries:+,}{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$dg\",\"size\":$sz,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"}}"
    done
    tmp=$(mktemp "$layout/index.XXXXXX")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$entries" >"$tmp"
    oci_put "$layout" "$tmp"
}

# oci_tag LAYOUT MEDIATYPE DIGEST SIZE TAG: writes index.json naming DIGEST as TAG.
oci_tag() {
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"%s","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$2" "$3" "$4" "$5" >"$1/index.json"
}

# oci_blobs_of LAYOUT DIGEST: hex of every config and layer reachable from a manifest or
# index (manifests themselves excluded).
oci_blobs_of() {
    local layout=$1 dg=$2 f m
    f="$layout/blobs/sha256/${dg#sha256:}"
    if jq -e '.manifests' "$f" >/dev/null; then
        for m in $(jq -r '.manifests[].digest' "$f"); do
            oci_blobs_of "$layout" "$m"
        done
    else
        jq -r '.config.digest, .layers[].digest' "$f" | sed 's/^sha256://'
    fi
}
