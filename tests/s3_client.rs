//! The shared tier's S3 client against a real, replicated SeaweedFS cluster
//! on loopback (tests/common/seaweed.rs): signing, reads whole and by
//! range, conditional writes, uploads streamed from a file (one PUT and
//! multipart, aborted on failure), listings, presigned URLs, and the
//! errors of a wrong key and a dead store.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use common::relay::tempdir;
use common::seaweed::{ACCESS_KEY, SECRET_KEY};
use common::{free_port, Seaweed};
use ocirelay::cache::s3::{S3Client, S3Error, Written};
use ocirelay::config::s3::{S3Config, S3Credentials};
use ocirelay::config::Timeouts;
use ocirelay::upstream::{Conn, RespFraming, ResponseHead, Trust, TrustKey, Upstreams};
use ocirelay::wire::url::Url;

const MIB: u64 = 1 << 20;

fn config(endpoint: &str, bucket: &str, secret: &str) -> S3Config {
    S3Config {
        endpoint: Url::parse(endpoint).unwrap(),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        path_style: true,
        prefix: "pfx/".into(),
        credentials: S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: secret.into(),
            session_token: None,
        },
        ca_file: None,
        redirect: false,
        redirect_ttl: Duration::from_secs(300),
        part_size: 5 * MIB,
        timeout: Duration::from_secs(10),
        lease_wait: Duration::from_secs(10),
        conditional_writes: None,
        max_size: None,
    }
}

/// A cluster with `bucket` and a client of it; `None`: SeaweedFS is not
/// installed (the harness said so).
fn cluster(bucket: &str) -> Option<(Seaweed, S3Client)> {
    let sw = Seaweed::start()?;
    sw.bucket(bucket);
    let client = S3Client::new(&config(&sw.endpoint(), bucket, SECRET_KEY));
    Some((sw, client))
}

/// Runs `f` on a monoio runtime with a worker's `Upstreams` (plain http:
/// no TLS trust needed).
fn on_worker<F: Future<Output = ()>>(f: impl FnOnce(Upstreams) -> F) {
    on_worker_with(Vec::new(), f)
}

/// [`on_worker`] with the worker's TLS trusts.
fn on_worker_with<F: Future<Output = ()>>(trusts: Vec<Trust>, f: impl FnOnce(Upstreams) -> F) {
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        upstream_read: Duration::from_secs(10),
        client_header: Duration::from_secs(10),
        client_idle: Duration::from_secs(10),
        client_write: Duration::from_secs(10),
        upstream_idle: Duration::from_secs(30),
        client_body: Duration::from_secs(10),
        drain: Duration::from_secs(10),
    };
    let up = Upstreams::new(trusts, timeouts);
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(f(up));
}

/// A body of `len` bytes that differs at every offset (a part sent twice
/// or out of order shows).
fn pattern(len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8)
        .collect()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Reads the body of a `get` answer (Content-Length framed) and pools the
/// connection.
async fn body_of(up: &Upstreams, mut conn: Conn, head: ResponseHead) -> Vec<u8> {
    let RespFraming::Length(n) = head.framing else {
        panic!("framing {:?}", head.framing);
    };
    conn.consume(head.head_len);
    let mut out = Vec::with_capacity(n as usize);
    while (out.len() as u64) < n {
        if !conn.buffered().is_empty() {
            let take = conn.buffered().len().min(n as usize - out.len());
            out.extend_from_slice(&conn.buffered()[..take]);
            conn.consume(take);
            continue;
        }
        let (res, buf) = conn.read_body(Vec::with_capacity(64 * 1024)).await;
        let got = res.expect("body read");
        assert!(got > 0, "body ended after {} of {n}", out.len());
        out.extend_from_slice(&buf.unwrap()[..got]);
    }
    assert_eq!(out.len() as u64, n);
    up.release(conn);
    out
}

#[test]
fn small_objects_are_written_read_whole_and_by_range_and_deleted() {
    let Some((_sw, s3)) = cluster("small") else {
        return;
    };
    on_worker(|up| async move {
        assert!(s3.head(&up, "tags/a").await.unwrap().is_none());
        assert!(s3.get_small(&up, "tags/a", 100).await.unwrap().is_none());
        assert!(s3.get(&up, "tags/a", None).await.unwrap().is_none());

        let w = s3.put_small(&up, "tags/a", b"hello, tier two", false).await;
        assert_eq!(w.unwrap(), Written::Created);
        let info = s3.head(&up, "tags/a").await.unwrap().expect("present");
        assert_eq!(info.len, 15);
        assert!(info.modified_unix.is_some_and(|t| t > 1_700_000_000));

        let (body, info) = s3.get_small(&up, "tags/a", 100).await.unwrap().unwrap();
        assert_eq!(body, b"hello, tier two");
        assert_eq!(info.len, 15);
        match s3.get_small(&up, "tags/a", 10).await {
            Err(S3Error::BadAnswer { .. }) => {}
            other => panic!("larger than max: {other:?}"),
        }

        let (conn, head) = s3.get(&up, "tags/a", None).await.unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(body_of(&up, conn, head).await, b"hello, tier two");
        let (conn, head) = s3.get(&up, "tags/a", Some((7, 4))).await.unwrap().unwrap();
        assert_eq!(head.status, 206);
        assert_eq!(body_of(&up, conn, head).await, b"tier");
        assert!(
            up.idle_count() > 0,
            "connections read to the end are pooled"
        );

        s3.delete(&up, "tags/a").await.unwrap();
        assert!(s3.head(&up, "tags/a").await.unwrap().is_none());
        s3.delete(&up, "tags/a")
            .await
            .expect("deleting an absent key is fine");
    });
}

#[test]
fn a_conditional_put_on_an_existing_key_is_exists_and_changes_nothing() {
    let Some((_sw, s3)) = cluster("conditional") else {
        return;
    };
    on_worker(|up| async move {
        let first = s3.put_small(&up, "leases/sha256/ab", b"node-a", true).await;
        assert_eq!(first.unwrap(), Written::Created);
        let second = s3.put_small(&up, "leases/sha256/ab", b"node-b", true).await;
        assert_eq!(second.unwrap(), Written::Exists);
        let (body, _) = s3
            .get_small(&up, "leases/sha256/ab", 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, b"node-a", "the first writer holds the lease");
        // Without the condition a PUT replaces.
        let third = s3
            .put_small(&up, "leases/sha256/ab", b"node-c", false)
            .await;
        assert_eq!(third.unwrap(), Written::Created);
    });
}

#[test]
fn files_are_uploaded_in_one_put_or_in_parts_and_read_back_exactly() {
    let Some((sw, s3)) = cluster("files") else {
        return;
    };
    let dir = tempdir::Dir::new("s3-files");
    let small = pattern(MIB + 3);
    let large = pattern(12 * MIB + 17); // three parts of 5 MiB, the last short
    let small_path = write_file(dir.path(), "small", &small);
    let large_path = write_file(dir.path(), "large", &large);
    on_worker(|up| async move {
        s3.put_file(&up, "blobs/small", &small_path, small.len() as u64)
            .await
            .unwrap();
        s3.put_file(&up, "blobs/large", &large_path, large.len() as u64)
            .await
            .unwrap();
        for (key, data) in [("blobs/small", &small), ("blobs/large", &large)] {
            let info = s3.head(&up, key).await.unwrap().unwrap();
            assert_eq!(info.len, data.len() as u64, "{key}");
            let (conn, head) = s3.get(&up, key, None).await.unwrap().unwrap();
            assert!(
                body_of(&up, conn, head).await == *data,
                "{key}: bytes differ"
            );
        }
        // A range across the first part's end.
        let at = 5 * MIB - 10;
        let (conn, head) = s3
            .get(&up, "blobs/large", Some((at, 20)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            body_of(&up, conn, head).await,
            large[at as usize..at as usize + 20]
        );
    });
    assert!(sw.uploads_in_progress("files").is_empty());
}

#[test]
fn a_failed_upload_leaves_no_object_and_no_parts() {
    let Some((sw, s3)) = cluster("failed") else {
        return;
    };
    let dir = tempdir::Dir::new("s3-failed");
    // Files shorter than the length the upload was asked for: the local
    // file fails half way (a truncated cache file).
    let short_single = write_file(dir.path(), "single", &pattern(MIB));
    let short_multi = write_file(dir.path(), "multi", &pattern(7 * MIB));
    on_worker(|up| async move {
        match s3
            .put_file(&up, "blobs/single", &short_single, 2 * MIB)
            .await
        {
            Err(S3Error::Local(e)) => assert!(e.to_string().contains("ended"), "{e}"),
            other => panic!("short single file: {other:?}"),
        }
        assert!(s3.head(&up, "blobs/single").await.unwrap().is_none());

        match s3
            .put_file(&up, "blobs/multi", &short_multi, 12 * MIB)
            .await
        {
            Err(S3Error::Local(_)) => {}
            other => panic!("short multipart file: {other:?}"),
        }
        assert!(s3.head(&up, "blobs/multi").await.unwrap().is_none());

        match s3
            .put_file(&up, "blobs/none", Path::new("/nonexistent/file"), 10)
            .await
        {
            Err(S3Error::Local(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("missing file: {other:?}"),
        }
    });
    let left = sw.uploads_in_progress("failed");
    assert!(
        left.is_empty(),
        "the multipart upload was aborted: {left:?}"
    );
}

#[test]
fn listings_page_with_continuation_tokens_and_hide_the_prefix() {
    let Some((_sw, s3)) = cluster("listing") else {
        return;
    };
    on_worker(|up| async move {
        for i in 0..5 {
            s3.put_small(&up, &format!("used/k{i}"), b"x", false)
                .await
                .unwrap();
        }
        s3.put_small(&up, "tags/other", b"y", false).await.unwrap();
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s3
                .list_page(&up, "used/", token.as_deref(), 2)
                .await
                .unwrap();
            pages += 1;
            assert!(page.objects.len() <= 2);
            for o in &page.objects {
                assert_eq!(o.size, 1);
                assert!(o.modified_unix > 1_700_000_000, "{o:?}");
            }
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next {
                Some(t) if pages < 10 => token = Some(t),
                Some(_) => panic!("more than 10 pages of 2 for 5 keys"),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(
            keys,
            ["used/k0", "used/k1", "used/k2", "used/k3", "used/k4"]
        );
        let all = s3.list(&up, "", None).await.unwrap();
        assert_eq!(all.objects.len(), 6);
        assert!(all.next.is_none());
    });
}

#[test]
fn a_presigned_url_is_fetched_by_a_plain_client() {
    let Some((sw, s3)) = cluster("presign") else {
        return;
    };
    let s3r = &s3;
    on_worker(|up| async move {
        s3r.put_small(&up, "blobs/p", b"presigned bytes", false)
            .await
            .unwrap();
    });
    let url = s3.presign_get("blobs/p", Duration::from_secs(60));
    let u = Url::parse(&url).unwrap();
    assert_eq!(u.origin.port, sw.s3_port);
    let r = sw.client().get(&u.path_and_query).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"presigned bytes");
    // The signature covers the key: another key with it is refused.
    let other = u.path_and_query.replace("blobs/p?", "blobs/q?");
    assert_eq!(sw.client().get(&other).unwrap().status, 403);
}

#[test]
fn a_wrong_secret_is_a_403_with_s3s_code() {
    let Some((sw, _)) = cluster("secret") else {
        return;
    };
    let s3 = S3Client::new(&config(&sw.endpoint(), "secret", "not-the-secret"));
    let dir = tempdir::Dir::new("s3-secret");
    let file = write_file(dir.path(), "f", &pattern(2 * MIB));
    on_worker(|up| async move {
        // Refused before the body is read: the status still shows.
        match s3.put_file(&up, "blob", &file, 2 * MIB).await {
            Err(S3Error::Status { status: 403, .. }) => {}
            other => panic!("wrong secret, streamed upload: {other:?}"),
        }
        match s3.put_small(&up, "k", b"x", false).await {
            Err(e @ S3Error::Status { status: 403, .. }) => {
                let S3Error::Status { ref code, .. } = e else {
                    unreachable!()
                };
                assert_eq!(code, "SignatureDoesNotMatch");
                let shown = e.to_string();
                assert!(shown.starts_with("s3 put: status 403"), "{shown}");
                assert!(!shown.contains("not-the-secret"), "{shown}");
            }
            other => panic!("wrong secret: {other:?}"),
        }
        match s3.get_small(&up, "k", 10).await {
            Err(S3Error::Status { status: 403, .. }) => {}
            other => panic!("wrong secret: {other:?}"),
        }
    });
}

#[test]
fn a_dead_or_silent_store_is_unreachable_within_the_timeout() {
    // Nothing listens: refused at once.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s3 = S3Client::new(&config(&dead, "dead", SECRET_KEY));
    // A listener that accepts (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(
        &format!("http://{}", silent.local_addr().unwrap()),
        "silent",
        SECRET_KEY,
    );
    cfg.timeout = Duration::from_millis(300);
    cfg.part_size = 16 * MIB;
    let quiet = S3Client::new(&cfg);
    let dir = tempdir::Dir::new("s3-silent");
    // More than the loopback socket buffers hold: the upload stalls.
    let file = write_file(dir.path(), "f", &pattern(12 * MIB));
    on_worker(|up| async move {
        // The test's own bound: without the client's, this would hang.
        let upload = quiet.put_file(&up, "k", &file, 12 * MIB);
        let Ok(result) = monoio::time::timeout(Duration::from_secs(20), upload).await else {
            panic!("a stalled upload was not given up");
        };
        match result {
            Err(S3Error::Unreachable { op: "put", why }) => {
                assert!(why.contains("timed out"), "{why}")
            }
            other => panic!("silent store, upload: {other:?}"),
        }
        match s3.head(&up, "k").await {
            Err(S3Error::Unreachable { op: "head", .. }) => {}
            other => panic!("dead store: {other:?}"),
        }
        match quiet.get_small(&up, "k", 10).await {
            // The store's `timeout` bounds the whole request and each read
            // (whichever fires first says so).
            Err(S3Error::Unreachable { op: "get", why }) => {
                assert!(why.contains("within") || why.contains("timed out"), "{why}")
            }
            other => panic!("silent store: {other:?}"),
        }
    });
    drop(silent);
}

#[test]
fn reads_go_on_with_one_volume_server_killed() {
    let Some((mut sw, s3)) = cluster("replicated") else {
        return;
    };
    let dir = tempdir::Dir::new("s3-replicated");
    let big = pattern(6 * MIB);
    let big_path = write_file(dir.path(), "big", &big);
    let keys: Vec<String> = (0..12).map(|i| format!("blobs/r{i}")).collect();
    on_worker(|up| {
        let (keys, s3, big_path) = (&keys, &s3, &big_path);
        async move {
            for k in keys {
                s3.put_small(&up, k, k.as_bytes(), false).await.unwrap();
            }
            s3.put_file(&up, "blobs/big", big_path, 6 * MIB)
                .await
                .unwrap();
        }
    });
    sw.kill_volume(1);
    on_worker(|up| {
        let (keys, s3, big) = (&keys, &s3, &big);
        async move {
            for k in keys {
                let got = s3.get_small(&up, k, 100).await;
                let (body, _) = got.unwrap_or_else(|e| panic!("{k}: {e}")).unwrap();
                assert_eq!(body, k.as_bytes());
            }
            let (conn, head) = s3.get(&up, "blobs/big", None).await.unwrap().unwrap();
            assert!(body_of(&up, conn, head).await == *big);
        }
    });
}

#[test]
fn an_https_store_is_verified_with_its_ca_file() {
    let Some(sw) = Seaweed::start_tls() else {
        return;
    };
    sw.bucket("tls");
    let endpoint = format!("https://127.0.0.1:{}", sw.https_port);
    let mut cfg = config(&endpoint, "tls", SECRET_KEY);
    cfg.ca_file = Some(sw.ca_file());
    let with_ca = S3Client::new(&cfg);
    let without = S3Client::new(&config(&endpoint, "tls", SECRET_KEY));
    // What `server` registers for a worker: the web roots, and the CA
    // file's roots under the key of their content.
    let roots = ocirelay::tls::load_certs(&sw.ca_file()).unwrap();
    let trusts = vec![
        Trust {
            key: TrustKey::of(&[]),
            config: ocirelay::tls::client_config(&[]).unwrap(),
        },
        Trust {
            key: TrustKey::of(&roots),
            config: ocirelay::tls::client_config(&roots).unwrap(),
        },
    ];
    on_worker_with(trusts, |up| async move {
        let w = with_ca.put_small(&up, "k", b"over tls", false).await;
        assert_eq!(w.unwrap(), Written::Created);
        let (body, _) = with_ca.get_small(&up, "k", 100).await.unwrap().unwrap();
        assert_eq!(body, b"over tls");
        // The web roots alone do not vouch for the store's own CA.
        match without.head(&up, "k").await {
            Err(S3Error::Unreachable { why, .. }) => assert!(why.contains("TLS"), "{why}"),
            other => panic!("no ca_file: {other:?}"),
        }
    });
}

#[test]
fn a_listing_of_more_than_a_thousand_keys_comes_in_pages_of_a_thousand() {
    let Some((_sw, s3)) = cluster("thousand") else {
        return;
    };
    on_worker(|up| async move {
        for i in 0..1001 {
            s3.put_small(&up, &format!("used/{i:04}"), b"", false)
                .await
                .unwrap();
        }
        let first = s3.list(&up, "used/", None).await.unwrap();
        assert_eq!(first.objects.len(), 1000);
        assert_eq!(first.objects[999].key, "used/0999");
        let token = first.next.expect("a second page");
        let second = s3.list(&up, "used/", Some(&token)).await.unwrap();
        let keys: Vec<&str> = second.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["used/1000"]);
        assert!(second.next.is_none());
    });
}
