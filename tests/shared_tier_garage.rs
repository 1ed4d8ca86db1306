//! The shared tier on the second kind of store: a real three-node Garage
//! cluster (replication 3), which ignores `If-None-Match: *`. ocirelay
//! finds that out at start and takes its leases by writing and reading
//! back; each ocirelay node talks to a different Garage node.
//!
//! - what one node pulled, another serves from the bucket while the
//!   upstream is down, digests checked;
//! - 8 concurrent cold pulls of one blob over three nodes: every one right,
//!   and at most one upstream download per node (the read-back lease's
//!   bound; typically one in all);
//! - with one Garage node killed, a fresh ocirelay node still serves from
//!   the bucket.

mod common;

use common::*;

/// A node through Garage node `i`. Garage answers its first requests after
/// a node was lost only once its RPC to that node times out (seen: 7.6 s):
/// a store timeout above that.
fn node(hub: &HubDouble, g: &Garage, i: usize, dir: &std::path::Path) -> Relay {
    Relay::start_with(&tier_node_config(
        hub,
        dir,
        &g.cache_s3_table(i),
        "timeout = \"20s\"\n",
    ))
}

#[test]
fn on_garage_another_node_serves_from_the_bucket_with_the_upstream_down() {
    let Some(mut g) = Garage::start_or_skip("garage shared tier") else {
        return;
    };
    let hub = hub();
    let dirs: Vec<_> = (0..3)
        .map(|i| tempdir::Dir::new(&format!("gtier-{i}")))
        .collect();
    let a = node(&hub, &g, 0, dirs[0].path());
    let blobs = pull_alpine(&hub, &a);
    uploaded(&a, blobs.len() as f64);
    for host in Host::ALL {
        hub.set_down(host, true).unwrap();
    }
    let b = node(&hub, &g, 1, dirs[1].path());
    pull_alpine_offline(&hub, &b, &blobs);
    assert!(
        Scrape::of(&b).value("ocirelay_shared_tier_blob_hits_total", &[]) >= blobs.len() as f64
    );

    // One Garage node lost (replication 3): a third ocirelay node, through
    // another Garage node, still gets everything from the bucket.
    g.kill_node(1);
    let c3 = node(&hub, &g, 2, dirs[2].path());
    let mut c = c3.client();
    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
        .unwrap();
    let tok = t.json().unwrap()["token"].as_str().unwrap().to_string();
    for d in &blobs {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{d}"), &tok);
        let m = c3.metrics_client().get("/metrics").unwrap().text();
        let tier: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("ocirelay_shared"))
            .collect();
        assert_eq!(
            r.status,
            200,
            "{d}: {}\n{}\n{tier:?}",
            r.text(),
            c3.stderr()
        );
        assert_eq!(&sha256(&r.body), d);
    }
}

#[test]
fn on_garage_concurrent_cold_pulls_download_at_most_once_per_node() {
    let Some(g) = Garage::start_or_skip("garage shared tier") else {
        return;
    };
    let hub = hub();
    let digest = hub.add_random_blob("library/alpine", 6 << 20, 99);
    let dirs: Vec<_> = (0..3)
        .map(|i| tempdir::Dir::new(&format!("gtier-c{i}")))
        .collect();
    let nodes: Vec<Relay> = (0..3).map(|i| node(&hub, &g, i, dirs[i].path())).collect();
    let tokens: Vec<String> = nodes
        .iter()
        .map(|n| anonymous_token(n, &mut n.client(), "library/alpine"))
        .collect();
    pull_concurrently(&nodes, &tokens, &digest, 8);
    let gets = cdn_gets(&hub, &digest);
    let logs: String = nodes.iter().map(|n| n.stderr()).collect();
    assert!(
        (1..=3).contains(&gets),
        "{gets} downloads over three nodes\n{logs}"
    );
    eprintln!("garage: {gets} upstream download(s) for 8 pulls over 3 nodes");
    assert!(logs.contains("ignores conditional writes"), "{logs}");
}
