//! The operator's cache commands against a directory a running mirror uses:
//! `ocirelay cache stats` (objects, bytes, the mirror's hit ratio),
//! `cache verify` (a corrupted object is found and dropped, and the next
//! pull fetches it again) and `cache prune`; and `cache warm`, which pulls
//! images through the running mirror so that a later pull needs nothing from
//! the upstream.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use hubdouble::Flavor;

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

// ---- cache warm ----

/// What a command printed and whether it succeeded.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `ocirelay cache warm ARGS` with `env`.
fn warm_with(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_ocirelay"))
        .args(["cache", "warm"])
        .args(args)
        .env_remove("OCIRELAY_WARM_AUTH")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `ocirelay cache warm --mirror <relay> IMAGES`.
fn warm(relay: &Relay, images: &[&str]) -> Ran {
    let mirror = format!("http://{}", relay.http);
    let args: Vec<&str> = ["--mirror", mirror.as_str()]
        .into_iter()
        .chain(images.iter().copied())
        .collect();
    warm_with(&args, &[])
}

/// Where the cache in `dir` keeps blob `digest`.
fn stored_blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Upstream requests that move content by digest: blob GETs and HEADs at
/// the registry, blob downloads at the CDN, manifests named by digest.
fn upstream_by_digest(hub: &HubDouble) -> usize {
    let registry = hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .filter(|e| e.path().contains("/blobs/") || e.path().contains("/manifests/sha256:"))
        .count();
    registry + hub.log().for_host(Host::Cdn).len()
}

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[test]
fn a_warmed_index_is_pulled_with_no_upstream_request_by_digest() {
    let hub = hub();
    let dir = tempdir::Dir::new("warm-index");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let multi = hub.seeded().multi.clone();
    assert_eq!(multi.images.len(), 2);

    let w = warm(&relay, &["multi"]);
    assert!(w.ok, "{}{}", w.stdout, w.stderr);
    assert!(
        w.stdout
            .contains("docker.io/library/multi:latest: 3 manifests, 4 blobs ("),
        "{}",
        w.stdout
    );
    assert!(w.stdout.contains(", 0 failed"), "{}", w.stdout);
    let warmed = upstream_by_digest(&hub);
    assert!(warmed >= 6, "the warm went upstream for every object");

    // A pull of everything, as docker does it: not one request by digest
    // reaches the upstream.
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/multi");
    let get = |c: &mut Client, path: &str| {
        c.get_with(
            path,
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT_ALL)],
        )
        .unwrap()
    };
    let index = get(&mut c, "/v2/library/multi/manifests/latest");
    assert_eq!(index.status, 200);
    assert_eq!(index.body, multi.manifest_bytes);
    for img in &multi.images {
        let m = get(
            &mut c,
            &format!("/v2/library/multi/manifests/{}", img.manifest.digest),
        );
        assert_eq!(m.status, 200);
        assert_eq!(m.body, img.manifest_bytes);
        for blob in std::iter::once(&img.config).chain(&img.layers) {
            let b = get(&mut c, &format!("/v2/library/multi/blobs/{}", blob.digest));
            assert_eq!(b.status, 200);
            assert_eq!(sha256(&b.body), blob.digest);
        }
    }
    assert_eq!(upstream_by_digest(&hub), warmed);
}

#[test]
fn an_unknown_tag_fails_the_command_by_name_and_the_other_images_are_still_warmed() {
    let hub = hub();
    let dir = tempdir::Dir::new("warm-unknown");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    // Large enough to take many reads of the client's buffer.
    let big = hub.add_random_image("library/big", "v1", Flavor::Docker, &[3 << 20], 0x3a4);

    let w = warm(&relay, &["alpine:nope", "big:v1"]);
    assert!(!w.ok, "{}", w.stdout);
    assert!(
        w.stderr
            .contains("docker.io/library/alpine:nope: manifest nope: the mirror answered 404"),
        "{}",
        w.stderr
    );
    assert!(
        w.stdout
            .contains("docker.io/library/alpine:nope: 0 manifests, 0 blobs (0 B), 1 failed"),
        "{}",
        w.stdout
    );
    assert!(
        w.stdout
            .contains("docker.io/library/big:v1: 1 manifest, 2 blobs (3.0 MiB), 0 failed"),
        "{}",
        w.stdout
    );
    assert!(w.stdout.contains("warmed 1 of 2 images"), "{}", w.stdout);
    let layer = stored_blob(dir.path(), &big.layers[0].digest);
    assert!(wait_until(Duration::from_secs(10), || layer.exists()));
}

#[test]
fn a_bad_reference_is_refused_before_anything_is_fetched() {
    // No mirror at this address: references are checked first.
    let nothing = format!("http://{}", hubdouble::unused_addr());
    let w = warm_with(&["--mirror", &nothing, "alpine", "Alpine:latest"], &[]);
    assert!(!w.ok);
    assert!(
        w.stderr
            .contains("\"Alpine:latest\" is not an image reference: invalid repository name"),
        "{}",
        w.stderr
    );
    assert!(!w.stderr.contains("no mirror answers"), "{}", w.stderr);
    assert!(w.stdout.is_empty(), "{}", w.stdout);
}

#[test]
fn no_mirror_at_the_configured_address_is_named_with_a_hint() {
    let dir = tempdir::Dir::new("warm-none");
    let addr = hubdouble::unused_addr();
    let config = dir.path().join("ocirelay.toml");
    std::fs::write(&config, format!("listen = [\"{addr}\"]\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocirelay"))
        .arg("--config")
        .arg(&config)
        .args(["cache", "warm", "alpine"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("no mirror answers at http://{addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--mirror"), "{stderr}");
}

#[test]
fn a_private_image_warms_with_credentials_from_the_environment() {
    let hub = hub();
    let relay = Relay::start_with(&config_for(&hub, "[cache]\nenabled = true\n"));
    let mirror = format!("http://{}", relay.http);

    let anonymous = warm(&relay, &["private/secret"]);
    assert!(!anonymous.ok);
    assert!(anonymous.stderr.contains("401"), "{}", anonymous.stderr);

    let w = warm_with(
        &["--mirror", &mirror, "private/secret"],
        &[("OCIRELAY_WARM_AUTH", "alice:wonderland")],
    );
    assert!(w.ok, "{}{}", w.stdout, w.stderr);
    assert!(
        w.stdout
            .contains("docker.io/private/secret:latest: 1 manifest, 2 blobs"),
        "{}",
        w.stdout
    );
}

#[test]
fn an_https_mirror_is_warmed_through_with_its_ca_file() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(&hub, "[cache]\nenabled = true\n");
    let ca = relay.dir.path().join("warm-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mirror = format!("https://localhost:{}", relay.https.unwrap().port());
    let w = warm_with(
        &[
            "--mirror",
            &mirror,
            "--ca-file",
            ca.to_str().unwrap(),
            "alpine",
        ],
        &[],
    );
    assert!(w.ok, "{}{}", w.stdout, w.stderr);
    assert!(
        w.stdout
            .contains("docker.io/library/alpine:latest: 1 manifest, 3 blobs"),
        "{}",
        w.stdout
    );
}
