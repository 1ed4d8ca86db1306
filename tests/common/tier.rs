//! What the shared tier's tests (`tests/shared_tier*.rs`) share: a node's
//! config, pulls with their digests checked, waits on a node's uploads,
//! the double's CDN downloads.

use std::time::Duration;

use hubdouble::{Host, HubDouble};

use super::oci::{anonymous_token, bearer, get_auth};
use super::relay::{config_for, Relay};
use super::scrape::Scrape;
use super::{sha256, wait_until};

pub const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

/// A node's config: the cache in `dir`, the shared tier's `table` (a
/// `[cache.s3]` block) plus `s3_extra` keys, short store timeouts.
pub fn tier_node_config(
    hub: &HubDouble,
    dir: &std::path::Path,
    table: &str,
    s3_extra: &str,
) -> String {
    config_for(
        hub,
        &format!(
            "[cache]\nenabled = true\ndir = \"{}\"\n{table}timeout = \"3s\"\nlease_wait = \"30s\"\n{s3_extra}",
            dir.display()
        ),
    )
}

/// Waits until `relay` has nothing left to upload and uploaded at least
/// `uploads` objects.
pub fn uploaded(relay: &Relay, uploads: f64) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(30), || {
        let s = Scrape::of(relay);
        last = format!(
            "uploads {} pending {}",
            s.value("ocirelay_shared_tier_uploads_total", &[]),
            s.value("ocirelay_shared_tier_uploads_pending", &[])
        );
        s.value("ocirelay_shared_tier_uploads_total", &[]) >= uploads
            && s.value("ocirelay_shared_tier_uploads_pending", &[]) == 0.0
    });
    assert!(ok, "uploads did not finish: {last}\n{}", relay.stderr());
}

/// The double's CDN GETs of `digest` (HEADs are access checks, free).
pub fn cdn_gets(hub: &HubDouble, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    hub.log()
        .for_host(Host::Cdn)
        .iter()
        .filter(|e| e.method == "GET" && e.path().contains(hex))
        .count()
}

/// Pulls alpine:latest anonymously through `relay`: the manifest and every
/// blob, digests checked. Returns the blobs' digests.
pub fn pull_alpine(hub: &HubDouble, relay: &Relay) -> Vec<String> {
    let img = hub.seeded().alpine.clone();
    let mut c = relay.client();
    let tok = anonymous_token(relay, &mut c, "library/alpine");
    let m = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, img.manifest_bytes);
    let blobs: Vec<String> = std::iter::once(&img.config)
        .chain(&img.layers)
        .map(|d| d.digest.clone())
        .collect();
    for b in &blobs {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{b}"), &tok);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(&sha256(&r.body), b);
    }
    blobs
}
