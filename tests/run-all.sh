#!/usr/bin/env bash
# Runs every ocirelay test: lint, unit and hermetic integration tests (Rust
# Docker Hub double), the fuzz targets' build, and the end-to-end pulls with
# real software (distribution registry, nginx, skopeo, podman, containerd).
# Fails on the first failing stage.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n==== %s ====\n' "$*"; }

stage "test dependencies"
bash tests/deps.sh

stage "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "unit and integration tests"
# The shared tier's tests run against the SeaweedFS that deps.sh installed:
# a missing `weed` fails them here instead of skipping.
export OCIRELAY_REQUIRE_S3=1
cargo test --workspace

stage "fuzz targets build and run briefly"
if cargo fuzz --version >/dev/null 2>&1; then
  # cargo-fuzz wants nightly flags; the stable toolchain accepts them with
  # RUSTC_BOOTSTRAP (only this build, nothing ships from it).
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O)
  # Each target from its checked-in seeds for 12 s (under 2.5 min for all);
  # new inputs go to a scratch corpus, so the checked-in one stays as it is.
  # The long campaigns are in SECURITY.md.
  scratch=$(mktemp -d /tmp/ocirelay-fuzz.XXXXXX)
  for t in $(cd fuzz && cargo fuzz list); do
    mkdir -p "$scratch/$t" "fuzz/corpus/$t"
    fuzz/target/x86_64-unknown-linux-gnu/release/"$t" -max_total_time=12 -print_final_stats=1 \
      -artifact_prefix="$scratch/$t-" "$scratch/$t" "fuzz/corpus/$t" 2>"$scratch/$t.log" \
      || { tail -40 "$scratch/$t.log"; echo "fuzz target $t failed (artifacts in $scratch)"; exit 1; }
    echo "$t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || grep -o '^#[0-9]*' "$scratch/$t.log" | tail -1) executions"
  done
  rm -rf "$scratch"
else
  echo "cargo-fuzz not installed: building the fuzz crate with plain cargo"
  (cd fuzz && cargo build)
fi

stage "end-to-end with real clients and a real registry"
cargo build --release --bin ocirelay
OCIRELAY_BIN="$PWD/target/release/ocirelay" bash tests/e2e/run.sh

stage "soak, short (RSS and open fds flat under a mixed load)"
# 75 s, the bounds in benches/soak.sh's header; the 30-minute run is in SECURITY.md.
DURATION=75 WARMUP=25 BIN="$PWD/target/release/ocirelay" bash benches/soak.sh
