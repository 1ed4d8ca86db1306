//! The shared tier on a real, replicated SeaweedFS cluster (three volume
//! servers, a filer and the S3 gateway, each its own process on loopback),
//! with several ocirelay nodes on one bucket in front of the Docker Hub
//! double:
//!
//! - what one node pulled, another (with a cold disk) serves from the
//!   bucket while the upstream is down, the whole client flow, digests
//!   checked; a private image stays private;
//! - 8 concurrent cold pulls of one blob over three nodes: one upstream
//!   download (the lease);
//! - a wrong object in the bucket is found by its digest and never served;
//! - a lost volume server changes nothing; a stopped store leaves the nodes
//!   serving from their disks and the upstream, and `/readyz` and the
//!   metrics say so;
//! - manifests and tag records come from the bucket (no second counted
//!   manifest GET upstream);
//! - redirect mode: a 307 to a presigned URL, after the access check;
//! - uploads queued while the store was down are sent when it is back;
//! - `ocirelay cache prune --tier shared`: least recently used first, a dry
//!   run deletes nothing.

mod common;

use std::time::Duration;

use common::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use common::*;
use rusty_s3::S3Action;

const BUCKET: &str = "mirror";

/// A node's config: the cache in `dir`, the shared tier on `endpoint`.
fn node_config(hub: &HubDouble, dir: &std::path::Path, endpoint: &str, s3_extra: &str) -> String {
    let table = format!(
        "[cache.s3]\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
         access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"
    );
    tier_node_config(hub, dir, &table, s3_extra)
}

/// A cluster with the bucket, or `None` (the test then says why and
/// passes, unless `OCIRELAY_REQUIRE_S3` is set).
fn cluster() -> Option<Seaweed> {
    let sw = Seaweed::start()?;
    sw.bucket(BUCKET);
    Some(sw)
}

#[test]
fn what_one_node_pulled_another_serves_from_the_bucket_with_the_upstream_down() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let (da, db) = (tempdir::Dir::new("tier-a"), tempdir::Dir::new("tier-b"));
    let a = Relay::start_with(&node_config(&hub, da.path(), &sw.endpoint(), ""));
    let blobs = pull_alpine(&hub, &a);
    // alice's private image, through A as well.
    let secret = hub.seeded().secret.clone();
    let mut c = a.client();
    let scope = format!("repository%3A{}%3Apull", secret.repo.replace('/', "%2F"));
    let alice = c
        .get_with(
            &format!("/token?service=registry.docker.io&scope={scope}"),
            &[("Authorization", &basic_auth("alice", "wonderland"))],
        )
        .unwrap();
    let alice = alice.json().unwrap()["token"].as_str().unwrap().to_string();
    for l in &secret.layers {
        let r = get_auth(
            &mut c,
            &format!("/v2/{}/blobs/{}", secret.repo, l.digest),
            &alice,
        );
        assert_eq!(r.status, 200);
    }
    uploaded(&a, (blobs.len() + secret.layers.len()) as f64);

    for host in Host::ALL {
        hub.set_down(host, true).unwrap();
    }
    // B: a cold disk, the upstream gone. The whole client flow.
    let b = Relay::start_with(&node_config(&hub, db.path(), &sw.endpoint(), ""));
    let mut c = b.client();
    let ping = c.get("/v2/").unwrap();
    assert_eq!(ping.status, 401, "{}", ping.text());
    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
        .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    let tok = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let img = hub.seeded().alpine.clone();
    let m = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200, "{}\n{}", m.text(), b.stderr());
    assert_eq!(m.body, img.manifest_bytes);
    // A client resuming a pull: a range of a blob B's disk lacks, from the
    // bucket, after the same access check.
    let last = blobs.last().unwrap();
    let part = c
        .get_with(
            &format!("/v2/library/alpine/blobs/{last}"),
            &[("Authorization", &bearer(&tok)), ("Range", "bytes=1-")],
        )
        .unwrap();
    assert_eq!(part.status, 206, "{}\n{}", part.text(), b.stderr());
    for d in &blobs {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{d}"), &tok);
        assert_eq!(r.status, 200, "{d}: {}\n{}", r.text(), b.stderr());
        assert_eq!(&sha256(&r.body), d);
        if d == last {
            assert_eq!(part.body, r.body[1..], "the range's bytes");
        }
    }
    let s = Scrape::of(&b);
    assert!(
        s.value("ocirelay_shared_tier_blob_hits_total", &[]) >= blobs.len() as f64,
        "B's blobs came from the bucket"
    );
    // Now on B's own disk: stored as they passed, digest-checked.
    let stored = db.path().join("blobs/sha256");
    assert!(blobs.iter().all(|d| {
        let hex = d.trim_start_matches("sha256:");
        stored.join(&hex[..2]).join(hex).exists()
    }));
    // The private image: learnt with alice's credentials on A, never shared
    // as public; B cannot ask the upstream, so it serves it to no one.
    for l in &secret.layers {
        let path = format!("/v2/{}/blobs/{}", secret.repo, l.digest);
        let r = get_auth(&mut c, &path, &tok);
        assert_ne!(
            r.status, 200,
            "{path} served from the bucket to an anonymous token"
        );
        let r = c.get(&path).unwrap();
        assert_ne!(r.status, 200, "{path} served without credentials");
    }
}

#[test]
fn concurrent_cold_pulls_over_three_nodes_download_once() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    // Large enough that its download outlasts every node's lookup: without
    // the lease each node would fetch it.
    let digest = hub.add_random_blob("library/alpine", 24 << 20, 4242);
    let dirs: Vec<_> = (0..3)
        .map(|i| tempdir::Dir::new(&format!("tier-n{i}")))
        .collect();
    let nodes: Vec<Relay> = dirs
        .iter()
        .map(|d| Relay::start_with(&node_config(&hub, d.path(), &sw.endpoint(), "")))
        .collect();
    let tokens: Vec<String> = nodes
        .iter()
        .map(|n| anonymous_token(n, &mut n.client(), "library/alpine"))
        .collect();
    pull_concurrently(&nodes, &tokens, &digest, 8);
    let gets = cdn_gets(&hub, &digest);
    let logs: String = nodes.iter().map(|n| n.stderr()).collect();
    assert_eq!(
        gets, 1,
        "upstream downloads of one blob over three nodes\n{logs}"
    );
    assert!(logs.contains("honours conditional writes"), "{logs}");
}

#[test]
fn a_wrong_object_in_the_bucket_is_found_by_its_digest_and_never_served() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let small = hub.add_random_blob("library/alpine", 10 << 10, 7);
    let large = hub.add_random_blob("library/alpine", 3 << 20, 8);
    let (da, db) = (tempdir::Dir::new("tier-wa"), tempdir::Dir::new("tier-wb"));
    let a = Relay::start_with(&node_config(&hub, da.path(), &sw.endpoint(), ""));
    let mut c = a.client();
    let tok = anonymous_token(&a, &mut c, "library/alpine");
    for d in [&small, &large] {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{d}"), &tok);
        assert_eq!(&sha256(&r.body), d);
    }
    uploaded(&a, 2.0);
    // Damage both objects in the bucket: same length, other bytes.
    let mut s3 = sw.client();
    for (d, len) in [(&small, 10usize << 10), (&large, 3 << 20)] {
        let hex = d.trim_start_matches("sha256:");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        let url = sw.signed(BUCKET, |b, cr| {
            b.put_object(Some(cr), &key)
                .sign(Duration::from_secs(60))
                .to_string()
        });
        let r = s3
            .request("PUT", &url, &[], Some(&vec![b'x'; len]))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let downloads_before = cdn_gets(&hub, &small) + cdn_gets(&hub, &large);
    let b = Relay::start_with(&node_config(&hub, db.path(), &sw.endpoint(), ""));
    let mut c = b.client();
    let tok = anonymous_token(&b, &mut c, "library/alpine");
    // Small: checked before anything is sent, then fetched upstream.
    let r = c
        .get_with(
            &format!("/v2/library/alpine/blobs/{small}"),
            &[("Authorization", &bearer(&tok))],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", b.stderr()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256(&r.body), small);
    // Large: streamed; the wrong end is held back and the connection cut.
    let r = c.get_with(
        &format!("/v2/library/alpine/blobs/{large}"),
        &[("Authorization", &bearer(&tok))],
    );
    if let Ok(r) = &r {
        assert_ne!(
            sha256(&r.body),
            sha256(&vec![b'x'; 3 << 20]),
            "a wrong body served whole"
        );
        assert!(r.status != 200 || sha256(&r.body) == large || r.body.len() < 3 << 20);
    }
    assert!(
        Scrape::of(&b).value("ocirelay_shared_tier_corrupt_total", &[]) >= 2.0,
        "{}",
        b.stderr()
    );
    // The wrong objects were deleted: the next pull of the large one comes
    // from the upstream, whole and right, and is uploaded again.
    let mut c = b.client();
    let ok = wait_until(Duration::from_secs(10), || {
        match c.get_with(
            &format!("/v2/library/alpine/blobs/{large}"),
            &[("Authorization", &bearer(&tok))],
        ) {
            Ok(r) => r.status == 200 && sha256(&r.body) == large,
            Err(_) => {
                c.disconnect();
                false
            }
        }
    });
    assert!(ok, "{}", b.stderr());
    assert!(cdn_gets(&hub, &small) + cdn_gets(&hub, &large) > downloads_before);
    // Nothing wrong on B's disk.
    for p in files_under(&db.path().join("blobs")) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            sha256(&std::fs::read(&p).unwrap()),
            format!("sha256:{name}")
        );
    }
}

#[test]
fn a_lost_volume_server_changes_nothing_and_a_stopped_store_leaves_disk_and_upstream() {
    let Some(mut sw) = cluster() else { return };
    let hub = hub();
    let dirs: Vec<_> = (0..3)
        .map(|i| tempdir::Dir::new(&format!("tier-k{i}")))
        .collect();
    let a = Relay::start_with(&node_config(&hub, dirs[0].path(), &sw.endpoint(), ""));
    let blobs = pull_alpine(&hub, &a);
    uploaded(&a, blobs.len() as f64);
    let gets_before: usize = blobs.iter().map(|d| cdn_gets(&hub, d)).sum();

    // One of three storage nodes lost (every volume has a second copy).
    sw.kill_volume(0);
    let b = Relay::start_with(&node_config(&hub, dirs[1].path(), &sw.endpoint(), ""));
    pull_alpine(&hub, &b);
    let gets_after: usize = blobs.iter().map(|d| cdn_gets(&hub, d)).sum();
    assert_eq!(
        gets_after,
        gets_before,
        "B's blobs came from the bucket\n{}",
        b.stderr()
    );

    // The whole store down: C still serves, from the upstream; A from its
    // disk; both say so.
    sw.stop();
    let c_node = Relay::start_with(&node_config(&hub, dirs[2].path(), &sw.endpoint(), ""));
    pull_alpine(&hub, &c_node);
    pull_alpine(&hub, &a);
    // C asked the store on its misses; A, which needs nothing from it,
    // learns it from its heartbeat (10 s): both say so within a bounded wait.
    for n in [&a, &c_node] {
        let mut m = n.metrics_client();
        let mut text = String::new();
        let down = wait_until(Duration::from_secs(25), || {
            let r = m.get("/readyz").unwrap();
            assert_eq!(
                r.status, 200,
                "a node without its shared tier is still ready"
            );
            text = r.text();
            text.contains("shared_tier: ok (down for")
        });
        assert!(down, "{text}\n{}", n.stderr());
    }
    let s = Scrape::of(&c_node);
    assert_eq!(s.value("ocirelay_shared_tier_up", &[]), 0.0);
    assert!(s.value("ocirelay_shared_tier_errors_total", &[]) >= 1.0);
    assert!(
        c_node.wait_for_log("shared tier: ", Duration::from_secs(5)),
        "{}",
        c_node.stderr()
    );
}

#[test]
fn manifests_and_tag_records_come_from_the_bucket() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let dirs: Vec<_> = (0..3)
        .map(|i| tempdir::Dir::new(&format!("tier-m{i}")))
        .collect();
    let nodes: Vec<Relay> = dirs
        .iter()
        .map(|d| Relay::start_with(&node_config(&hub, d.path(), &sw.endpoint(), "")))
        .collect();
    pull_alpine(&hub, &nodes[0]);
    // The tag record and the manifest reach the bucket (small writes).
    let ok = wait_until(Duration::from_secs(10), || {
        Scrape::of(&nodes[0]).value("ocirelay_shared_tier_uploads_pending", &[]) == 0.0
    });
    assert!(ok);
    for n in &nodes[1..] {
        pull_alpine(&hub, n);
    }
    let manifest_gets = hub
        .log()
        .for_host(Host::Registry)
        .iter()
        .filter(|e| e.method == "GET" && e.path().contains("/manifests/") && e.has_bearer_auth())
        .count();
    assert_eq!(manifest_gets, 1, "one counted manifest GET for three nodes");
    for n in &nodes[1..] {
        let s = Scrape::of(n);
        assert!(s.value("ocirelay_shared_tier_tag_hits_total", &[]) >= 1.0);
        assert!(s.value("ocirelay_shared_tier_manifest_hits_total", &[]) >= 1.0);
    }
}

#[test]
fn redirect_mode_sends_a_presigned_url_after_the_access_check() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let (da, dr) = (tempdir::Dir::new("tier-ra"), tempdir::Dir::new("tier-rr"));
    let a = Relay::start_with(&node_config(&hub, da.path(), &sw.endpoint(), ""));
    let blobs = pull_alpine(&hub, &a);
    uploaded(&a, blobs.len() as f64);
    let r = Relay::start_with(&node_config(
        &hub,
        dr.path(),
        &sw.endpoint(),
        "redirect = true\nredirect_ttl = \"2m\"\n",
    ));
    let mut c = r.client();
    let path = format!("/v2/library/alpine/blobs/{}", blobs[1]);
    // No credentials: the upstream's challenge, not a URL.
    let unauth = c.get(&path).unwrap();
    assert_eq!(unauth.status, 401, "{}", unauth.text());
    assert!(unauth.header("location").is_none());
    let tok = anonymous_token(&r, &mut c, "library/alpine");
    let res = get_auth(&mut c, &path, &tok);
    assert_eq!(res.status, 307, "{}", res.text());
    let url = res.header("location").unwrap().to_string();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let mut direct = hubdouble::client::Client::from_url(&url, None).unwrap();
    let target = url.split_once("://").unwrap().1;
    let target = &target[target.find('/').unwrap()..];
    let got = direct.get(target).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(sha256(&got.body), blobs[1]);
    assert!(Scrape::of(&r).value("ocirelay_shared_tier_redirects_total", &[]) >= 1.0);
    // A private image's blob: never redirected to an anonymous token.
    let secret = hub.seeded().secret.clone();
    let p = format!("/v2/{}/blobs/{}", secret.repo, secret.layers[0].digest);
    let res = get_auth(&mut c, &p, &tok);
    assert_ne!(res.status, 307);
    assert_ne!(res.status, 200);
}

#[test]
fn uploads_queued_while_the_store_was_down_are_sent_when_it_is_back() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let switch = Switch::to(([127, 0, 0, 1], sw.s3_port).into());
    let (da, db) = (tempdir::Dir::new("tier-ua"), tempdir::Dir::new("tier-ub"));
    let a = Relay::start_with(&node_config(&hub, da.path(), &switch.endpoint(), ""));
    switch.set(false);
    // Pulled while the store is down: served from the upstream, queued.
    let blobs = pull_alpine(&hub, &a);
    let s = Scrape::of(&a);
    assert_eq!(
        s.value("ocirelay_shared_tier_up", &[]),
        0.0,
        "{}",
        a.stderr()
    );
    assert!(s.value("ocirelay_shared_tier_uploads_pending", &[]) >= blobs.len() as f64);
    assert!(
        a.stderr().contains("serving from disk and upstream"),
        "{}",
        a.stderr()
    );
    // The worker's queue tries while the store is down (a probe every 5 s):
    // what it tried is kept for later, not lost.
    let errors = s.value("ocirelay_shared_tier_errors_total", &[]);
    let tried = wait_until(Duration::from_secs(15), || {
        Scrape::of(&a).value("ocirelay_shared_tier_errors_total", &[]) > errors
    });
    assert!(tried, "{}", a.stderr());
    // Back: the queue drains ...
    switch.set(true);
    uploaded(&a, blobs.len() as f64);
    assert!(
        a.wait_for_log("answers again", Duration::from_secs(5)),
        "{}",
        a.stderr()
    );
    // ... and another node, with the upstream gone, serves what was queued.
    for host in Host::ALL {
        hub.set_down(host, true).unwrap();
    }
    let b = Relay::start_with(&node_config(&hub, db.path(), &switch.endpoint(), ""));
    pull_alpine_offline(&hub, &b, &blobs);
    // The shared tier's series pass promtool.
    let text = a.metrics_client().get("/metrics").unwrap().text();
    promtool_check(&text).unwrap();
}

#[test]
fn prune_keeps_the_bucket_under_a_size_least_recently_used_first() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let old = hub.add_random_blob("library/alpine", 1 << 20, 31);
    let new = hub.add_random_blob("library/alpine", 1 << 20, 32);
    let da = tempdir::Dir::new("tier-p");
    let cfg = node_config(&hub, da.path(), &sw.endpoint(), "");
    let a = Relay::start_with(&cfg);
    let mut c = a.client();
    let tok = anonymous_token(&a, &mut c, "library/alpine");
    for d in [&old, &new] {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{d}"), &tok);
        assert_eq!(&sha256(&r.body), d);
        uploaded(&a, if d == &old { 1.0 } else { 2.0 });
        // Upload times a second apart at least (S3 dates are in seconds).
        std::thread::sleep(Duration::from_millis(1100));
    }
    let prune = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ocirelay"))
            .args(["--config", a.config_path().to_str().unwrap()])
            .args(["cache", "prune", "--tier", "shared"])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    let head = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        let url = sw.signed(BUCKET, |b, cr| {
            b.head_object(Some(cr), &key)
                .sign(Duration::from_secs(60))
                .to_string()
        });
        sw.client().head(&url).unwrap().status
    };
    // A dry run deletes nothing.
    let text = prune(&["--to", "1500KiB", "--dry-run"]);
    assert!(
        text.contains("would remove 1 objects (1048576 bytes)"),
        "{text}"
    );
    assert_eq!((head(&old), head(&new)), (200, 200));
    // Down to 1.5 MiB: the least recently used goes.
    let text = prune(&["--to", "1500KiB"]);
    assert!(text.contains("removed 1 objects (1048576 bytes)"), "{text}");
    assert_eq!((head(&old), head(&new)), (404, 200));
    // By age: nothing here is an hour old.
    let text = prune(&["--older-than", "1h"]);
    assert!(text.contains("removed 0 objects"), "{text}");
}

#[test]
fn a_store_refusing_the_credentials_is_down_and_the_node_serves_without_it() {
    let Some(sw) = cluster() else { return };
    let hub = hub();
    let dir = tempdir::Dir::new("tier-403");
    let table = format!(
        "[cache.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
         access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"not-the-secret\"\n",
        sw.endpoint()
    );
    let a = Relay::start_with(&tier_node_config(&hub, dir.path(), &table, ""));
    pull_alpine(&hub, &a);
    let r = a.metrics_client().get("/readyz").unwrap();
    let text = r.text();
    assert_eq!(r.status, 200, "{text}");
    assert!(text.contains("shared_tier: ok (down for"), "{text}");
    assert!(text.contains("403"), "the reason is shown: {text}");
    assert!(!text.contains("not-the-secret") && !a.stderr().contains("not-the-secret"));
}
