//! A real three-node Garage cluster (tests/common/garage.rs) as the shared
//! tier's store "without conditional writes": it serves S3 on loopback,
//! it does NOT refuse an `If-None-Match: *` PUT to an existing key (the
//! fact the shared tier's write-then-read-back lease is built on), and with
//! replication 3 a read still works with one node killed.
//!
//! Skipped (with a line saying so) when no `garage` binary is installed,
//! unless `OCIRELAY_REQUIRE_S3` is set.

mod common;

use std::time::Duration;

use common::{send_presigned, Garage};
use rusty_s3::S3Action;

const SIGNED_FOR: Duration = Duration::from_secs(300);

/// PUT `body` to `key` through node `i`, with `extra` headers signed too.
fn put(
    g: &Garage,
    i: usize,
    key: &str,
    body: &[u8],
    extra: &[(&'static str, &'static str)],
) -> u16 {
    let bucket = g.s3_bucket(i);
    let creds = g.credentials();
    let mut action = bucket.put_object(Some(&creds), key);
    for (name, value) in extra {
        action.headers_mut().insert(*name, *value);
    }
    let url = action.sign(SIGNED_FOR);
    let r = send_presigned("PUT", &url, extra, Some(body)).expect("PUT to garage");
    assert!(
        r.status == 200 || r.status == 412,
        "PUT {key}: {} {}",
        r.status,
        r.text()
    );
    r.status
}

/// GET `key` through node `i`: (status, body as text, so that a failure
/// shows the store's error message).
fn get(g: &Garage, i: usize, key: &str) -> (u16, String) {
    let bucket = g.s3_bucket(i);
    let creds = g.credentials();
    let url = bucket.get_object(Some(&creds), key).sign(SIGNED_FOR);
    let r = send_presigned("GET", &url, &[], None).expect("GET from garage");
    (r.status, r.text())
}

#[test]
fn an_object_put_through_one_node_is_read_through_another() {
    let Some(g) = Garage::start_or_skip("an_object_put_through_one_node_is_read_through_another")
    else {
        return;
    };
    assert_eq!(put(&g, 0, "blobs/sha256/ab/abcd", b"layer bytes", &[]), 200);
    for i in 0..3 {
        assert_eq!(
            get(&g, i, "blobs/sha256/ab/abcd"),
            (200, "layer bytes".to_string()),
            "node {i}"
        );
    }
    let (status, _) = get(&g, 1, "blobs/sha256/ab/none");
    assert_eq!(status, 404, "a missing key is a 404");
}

#[test]
fn garage_does_not_refuse_a_conditional_put_to_an_existing_key() {
    let Some(g) =
        Garage::start_or_skip("garage_does_not_refuse_a_conditional_put_to_an_existing_key")
    else {
        return;
    };
    let key = "leases/sha256/ab/abcd";
    let if_none_match = [("if-none-match", "*")];
    assert_eq!(
        put(&g, 0, key, b"node-a", &if_none_match),
        200,
        "first lease"
    );
    // A store with conditional writes answers 412 here (SeaweedFS, S3, R2,
    // MinIO). Garage takes the write and replaces the content: a node
    // cannot learn from the PUT's status that another holds the lease.
    assert_eq!(
        put(&g, 1, key, b"node-b", &if_none_match),
        200,
        "garage refused a conditional write: the shared tier may treat it as a store with conditional writes"
    );
    assert_eq!(
        get(&g, 2, key),
        (200, "node-b".to_string()),
        "the second write won"
    );
}

#[test]
fn a_read_still_works_with_one_of_three_nodes_killed() {
    let Some(mut g) = Garage::start_or_skip("a_read_still_works_with_one_of_three_nodes_killed")
    else {
        return;
    };
    assert_eq!(put(&g, 0, "blobs/sha256/cd/cdef", b"replicated", &[]), 200);
    g.kill_node(2);
    for i in 0..2 {
        assert_eq!(
            get(&g, i, "blobs/sha256/cd/cdef"),
            (200, "replicated".to_string()),
            "node {i}"
        );
    }
    // And a write still finds its quorum (2 of 3).
    assert_eq!(
        put(&g, 1, "blobs/sha256/ef/ef01", b"after the kill", &[]),
        200
    );
    assert_eq!(
        get(&g, 0, "blobs/sha256/ef/ef01"),
        (200, "after the kill".to_string())
    );
}

#[test]
fn the_clusters_cache_s3_table_is_a_valid_ocirelay_config() {
    let Some(g) = Garage::start_or_skip("the_clusters_cache_s3_table_is_a_valid_ocirelay_config")
    else {
        return;
    };
    let dir = common::tempdir::Dir::new("garage-cfg");
    let table = g.cache_s3_table(1);
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n[cache]\ndir = \"{}\"\n{table}",
        dir.path().join("cache").display()
    );
    let (ok, said) = common::config_check(&text);
    assert!(ok, "{said}\n{text}");
    assert!(table.contains(&g.endpoint_of(1)) && table.contains(&g.key_id));
}

#[test]
fn a_restarted_node_serves_what_was_written_while_it_was_down() {
    let Some(mut g) =
        Garage::start_or_skip("a_restarted_node_serves_what_was_written_while_it_was_down")
    else {
        return;
    };
    g.kill_node(2);
    let key = "blobs/sha256/12/1234";
    assert_eq!(put(&g, 0, key, b"written while node 2 was down", &[]), 200);
    g.restart_node(2);
    assert_eq!(
        get(&g, 2, key),
        (200, "written while node 2 was down".to_string())
    );
}
