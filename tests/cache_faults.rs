//! The content cache when things go wrong: a download cut mid-way (its
//! followers are cut cleanly, nothing is stored, the next pull fetches
//! again), `kill -9` during a miss (the next start removes the leftover and
//! serves nothing corrupt), a full disk (a small tmpfs: the pull completes
//! as a relay, nothing half-written stays) and an unusable cache directory
//! (the mirror relays, and says so).
//!
//! Upstream traffic is counted from the double's request log. The tmpfs
//! test mounts a 1 MiB tmpfs and needs root (as the test command runs in CI).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Objects and partial downloads under a cache directory (not its
/// counters file).
fn stored_or_partial(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = files_under(&dir.join("blobs"));
    v.extend(files_under(&dir.join("tmp")));
    v
}

#[test]
fn a_download_cut_mid_way_cuts_its_followers_and_stores_nothing() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-cut");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let size = 24usize << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0xc07);
    let path = format!("/v2/library/alpine/blobs/{digest}");
    hub.knobs().cut_blobs_after(6 << 20, Some(1));

    let complete: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (relay, path, tok, digest) = (&relay, &path, &tok, &digest);
                s.spawn(move || {
                    match relay
                        .client()
                        .get_with(path, &[("Authorization", &bearer(tok))])
                    {
                        Ok(r) => {
                            r.status == 200 && r.body.len() == size && sha256(&r.body) == *digest
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The one download was cut: nobody got a complete body (a short 200
    // that looks complete is what must never happen; each client saw the
    // connection end before the declared length or an error).
    assert!(complete.iter().all(|ok| !ok), "{complete:?}");
    assert_eq!(cdn_downloads(&hub, &digest), 1, "followers went upstream");
    assert!(
        wait_until(Duration::from_secs(5), || stored_or_partial(dir.path())
            .is_empty()),
        "left behind: {:?}",
        stored_or_partial(dir.path())
    );

    // The next pull tries again, and then it is stored.
    let r = get_auth(&mut relay.client(), &path, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
    assert_eq!(cdn_downloads(&hub, &digest), 2);
    // Stored once its download is verified and synced (just after the
    // client got its last byte).
    assert!(wait_until(Duration::from_secs(5), || files_under(
        &dir.path().join("blobs")
    )
    .len()
        == 1));
}

#[test]
fn kill_9_during_a_miss_leaves_nothing_served_after_a_restart() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-kill");
    let cfg = config_with_cache(&hub, dir.path());
    let relay = Relay::start_with(&cfg);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 64 << 20, 0x9);
    let path = format!("/v2/library/alpine/blobs/{digest}");

    // A client that reads a little and then stops: the download is under
    // way (its temporary file partly written) when the relay is killed.
    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", &path, &[("Authorization", &bearer(&tok))]));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    let tmp = dir.path().join("tmp");
    assert!(
        wait_until(Duration::from_secs(10), || files_under(&tmp)
            .iter()
            .any(|f| f.metadata().is_ok_and(|m| m.len() > 0))),
        "no download under way"
    );
    let killed = Command::new("kill")
        .args(["-9", &relay.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(raw);
    drop(relay);
    assert!(
        !files_under(&tmp).is_empty(),
        "the partial file should be there"
    );
    assert!(files_under(&dir.path().join("blobs")).is_empty());

    // Restart on the same directory: the leftover goes, the blob is fetched
    // again and served whole.
    let relay = Relay::start_with(&cfg);
    assert!(
        files_under(&tmp).is_empty(),
        "leftover kept: {:?}",
        files_under(&tmp)
    );
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let r = get_auth(&mut c, &path, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
    assert_eq!(cdn_downloads(&hub, &digest), 2);
}

#[test]
fn a_full_disk_leaves_the_pull_whole_and_nothing_half_written() {
    let hub = hub();
    let fs = Tmpfs::mount("1m");
    let relay = Relay::start_with(&config_with_cache(&hub, fs.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 3 << 20, 0xf011);
    let path = format!("/v2/library/alpine/blobs/{digest}");

    for round in 1..=2 {
        let r = get_auth(&mut relay.client(), &path, &tok);
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(sha256(&r.body), digest, "round {round}");
        assert_eq!(
            cdn_downloads(&hub, &digest),
            round,
            "not stored, so fetched again"
        );
    }
    assert!(wait_until(Duration::from_secs(5), || {
        stored_or_partial(fs.path()).is_empty()
    }));
    assert!(
        relay.stderr().contains("cache: not storing"),
        "{}",
        relay.stderr()
    );
}

#[test]
fn an_unusable_cache_directory_is_reported_and_the_mirror_relays() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-file");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let relay = Relay::start_with(&config_with_cache(&hub, &file.join("cache")));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let layer = hub.seeded().alpine.layers[0].digest.clone();
    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{layer}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer);
    assert!(
        relay.stderr().contains("cache: cannot use"),
        "{}",
        relay.stderr()
    );
    let mut f = std::fs::File::open(&file).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "x");
}

/// The client leading a download hangs up half way: the download goes on
/// without it (the rest asked for with a Range), the client following it
/// gets the whole blob, and it is stored.
#[test]
fn a_leader_that_hangs_up_does_not_cut_its_followers() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-leader-gone");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let digest = hub.add_random_blob("library/alpine", 48 << 20, 0x1ead);
    let path = format!("/v2/library/alpine/blobs/{digest}");

    // The leader reads its head and stops reading: its download is under way.
    let mut leader = Raw::connect(relay.http);
    leader.send(&request("GET", &path, &[("Authorization", &bearer(&tok))]));
    assert_eq!(leader.read_head().unwrap().status, 200);
    let tmp = dir.path().join("tmp");
    assert!(wait_until(Duration::from_secs(10), || files_under(&tmp)
        .iter()
        .any(|f| f.metadata().is_ok_and(|m| m.len() > 0))));
    std::thread::scope(|s| {
        let follower = s.spawn(|| get_auth(&mut relay.client(), &path, &tok));
        // Give the follower time to join the download, then hang up.
        std::thread::sleep(Duration::from_millis(300));
        drop(leader);
        let r = follower.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            sha256(&r.body),
            digest,
            "the follower was cut or got bad bytes"
        );
    });
    // The original download and the resumed rest.
    assert_eq!(cdn_downloads(&hub, &digest), 2);
    let hex = digest.trim_start_matches("sha256:");
    let stored = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert!(wait_until(Duration::from_secs(5), || stored.exists()));
    assert!(hub.log().for_host(Host::Cdn).iter().any(|e| e
        .header("range")
        .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")));
}

/// containerd resumes with `Range: bytes=N-`: while the blob is still
/// downloading for another client, the range is served from the bytes as
/// they arrive (its last byte once the whole blob is verified), with no
/// request of its own upstream.
#[test]
fn a_range_of_a_blob_still_downloading_is_served_from_the_arriving_bytes() {
    let hub = hub();
    let dir = tempdir::Dir::new("cache-range-follow");
    let relay = Relay::start_with(&config_with_cache(&hub, dir.path()));
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let size = 64usize << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0x4a);
    let full = hub.content().blob(&digest).unwrap();
    let path = format!("/v2/library/alpine/blobs/{digest}");
    let tmp = dir.path().join("tmp");
    std::thread::scope(|s| {
        let leader = s.spawn(|| get_auth(&mut relay.client(), &path, &tok));
        assert!(wait_until(Duration::from_secs(10), || files_under(&tmp)
            .iter()
            .any(|f| f.metadata().is_ok_and(|m| m.len() > 0))));
        let from = size / 2 + 12_345;
        let r = relay
            .client()
            .get_with(
                &path,
                &[
                    ("Authorization", &bearer(&tok)),
                    ("Range", &format!("bytes={from}-")),
                ],
            )
            .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("content-range").unwrap(),
            format!("bytes {from}-{}/{size}", size - 1)
        );
        assert!(r.body == full[from..], "the range's bytes differ");
        assert_eq!(sha256(&leader.join().unwrap().body), digest);
    });
    assert_eq!(cdn_downloads(&hub, &digest), 1, "the range went upstream");
    assert!(hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .all(|e| e.header("range").is_none()));
}
