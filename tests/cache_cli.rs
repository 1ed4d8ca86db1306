//! The operator's cache commands against a directory a running mirror uses:
//! `ocirelay cache stats` (objects, bytes, the mirror's hit ratio),
//! `cache verify` (a corrupted object is found and dropped, and the next
//! pull fetches it again) and `cache prune`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn cache_cmd(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ocirelay"))
        .arg("cache")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn stats_verify_and_prune_work_on_a_live_cache() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-cli");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 1 << 20, 0xc11);
    let path = format!("/v2/library/alpine/blobs/{digest}");
    let hex = digest.trim_start_matches("sha256:");
    let stored = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(sha256(&get_auth(&mut c, &path, &tok).body), digest);
    assert!(wait_until(Duration::from_secs(5), || stored.exists()));
    assert_eq!(sha256(&get_auth(&mut c, &path, &tok).body), digest);

    // One miss, one hit: the running mirror's counters reach `stats`.
    let mut report = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            report = cache_cmd(dir.path(), &["stats"]);
            report.contains("hit ratio 50.0%")
        }),
        "{report}"
    );
    assert!(report.contains("1 blobs"), "{report}");

    // A byte flipped on disk: verify drops it, and the next pull downloads
    // it again instead of serving it.
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let v = cache_cmd(dir.path(), &["verify"]);
    assert!(v.contains("0 objects match their digest, 1 dropped"), "{v}");
    assert!(!stored.exists());
    let cdn_before = hub.log().for_host(Host::Cdn).len();
    assert_eq!(sha256(&get_auth(&mut c, &path, &tok).body), digest);
    assert_eq!(hub.log().for_host(Host::Cdn).len(), cdn_before + 1);

    // Prune down to nothing.
    assert!(wait_until(Duration::from_secs(5), || stored.exists()));
    let p = cache_cmd(dir.path(), &["prune", "--to", "1"]);
    assert!(p.contains("removed 1 objects"), "{p}");
    assert!(!stored.exists());
}
