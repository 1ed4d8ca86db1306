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
cargo test --workspace

stage "fuzz targets build"
if cargo fuzz --version >/dev/null 2>&1; then
  # cargo-fuzz wants nightly flags; the stable toolchain accepts them with
  # RUSTC_BOOTSTRAP (only this build, nothing ships from it).
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O)
else
  echo "cargo-fuzz not installed: building the fuzz crate with plain cargo"
  (cd fuzz && cargo build)
fi

stage "end-to-end with real clients and a real registry"
cargo build --release --bin ocirelay
OCIRELAY_BIN="$PWD/target/release/ocirelay" bash tests/e2e/run.sh
