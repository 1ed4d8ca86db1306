//! Shared harness for ocirelay's integration tests. Each test crate says
//! `mod common;` and uses what it needs (everything is re-exported here):
//!
//! - [`relay`]: starts the real `ocirelay` binary against a [`HubDouble`]
//!   (or any upstream) and stops it (by its own PID) when dropped; the
//!   tests' config texts.
//! - [`oci`]: tokens through the relay's challenge, authorised GETs, OCI
//!   JSON error bodies.
//! - [`raw`]: a raw TCP client for byte-exact requests and for watching how
//!   the relay ends a connection.
//! - [`garage`]: a three-node Garage cluster (an S3 store that ignores
//!   conditional writes) for the shared tier's tests.
//! - [`fake_upstream`]: a scriptable plain-HTTP upstream for faults the
//!   double will not produce.
//! - [`process`]: a process's memory, read from /proc.
//! - [`pebble`]: Let's Encrypt's test CA (Debian's `pebble`) for the ACME
//!   tests.
//! - [`scrape`]: `/metrics` parsed, and `promtool` to check it.
//! - [`seaweed`]: a replicated SeaweedFS cluster (S3 gateway) for the
//!   shared cache tier.
//! - [`tier`]: what the shared tier's tests share (node configs, pulls,
//!   waits on uploads).
//! - [`tmpfs`]: a small tmpfs to fill or make read-only (needs root).
//!
//! Not every test crate uses every helper, hence the module-wide allows.
#![allow(dead_code, unused_imports)]

pub mod fake_upstream;
pub mod garage;
pub mod oci;
pub mod pebble;
pub mod process;
pub mod raw;
pub mod relay;
pub mod scrape;
pub mod seaweed;
pub mod tier;
pub mod tmpfs;

use std::time::{Duration, Instant};

pub use fake_upstream::*;
pub use garage::*;
pub use hubdouble::client::{basic_auth, Client, Response};
pub use hubdouble::{Host, HubDouble, Options};
pub use oci::*;
pub use pebble::*;
pub use process::*;
pub use raw::*;
pub use relay::*;
pub use scrape::*;
pub use seaweed::Seaweed;
pub use tier::*;
pub use tmpfs::*;

/// A Docker Hub double with the default options.
pub fn hub() -> HubDouble {
    HubDouble::start(Options::default()).expect("start hub double")
}

/// sha256 digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    hubdouble::sha256_digest(data)
}

/// Polls `f` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The length of the HTTP head at the start of `bytes` (through its blank
/// line), if it is all there.
pub fn head_len(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Files under `dir`, recursively (a cache directory's objects and
/// leftovers).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The double's CDN downloads of `digest` so far (from its request log).
pub fn cdn_downloads(hub: &HubDouble, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    hub.log()
        .for_host(Host::Cdn)
        .iter()
        .filter(|e| e.path().contains(hex))
        .count()
}
