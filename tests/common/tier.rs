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
/// `[cache.s3]` block) plus `s3_extra` keys; a 3 s store timeout unless
/// `s3_extra` sets one.
pub fn tier_node_config(
    hub: &HubDouble,
    dir: &std::path::Path,
    table: &str,
    s3_extra: &str,
) -> String {
    let timeout = if s3_extra.contains("timeout =") {
        ""
    } else {
        "timeout = \"3s\"\n"
    };
    config_for(
        hub,
        &format!(
            "[cache]\nenabled = true\ndir = \"{}\"\n{table}{timeout}lease_wait = \"30s\"\n{s3_extra}",
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

/// alpine:latest through `relay` while the upstream is down: the token
/// from ocirelay itself (anonymous), the manifest by tag and every blob in
/// `blobs`, each checked.
pub fn pull_alpine_offline(hub: &HubDouble, relay: &Relay, blobs: &[String]) {
    let mut c = relay.client();
    let t = c
        .get("/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull")
        .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    let tok = t.json().unwrap()["token"].as_str().unwrap().to_string();
    let m = c
        .get_with(
            "/v2/library/alpine/manifests/latest",
            &[("Authorization", &bearer(&tok)), ("Accept", ACCEPT)],
        )
        .unwrap();
    assert_eq!(m.status, 200, "{}\n{}", m.text(), relay.stderr());
    assert_eq!(m.body, hub.seeded().alpine.manifest_bytes);
    for d in blobs {
        let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{d}"), &tok);
        assert_eq!(r.status, 200, "{d}: {}\n{}", r.text(), relay.stderr());
        assert_eq!(&sha256(&r.body), d);
    }
}

/// `n` concurrent GETs of the blob `digest` of library/alpine, spread
/// over `nodes` (request i through node i % len, with its token), each on a
/// connection of its own: every one 200 and right.
pub fn pull_concurrently(nodes: &[Relay], tokens: &[String], digest: &str, n: usize) {
    let path = format!("/v2/library/alpine/blobs/{digest}");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (node, tok, path) = (&nodes[i % nodes.len()], &tokens[i % nodes.len()], &path);
                s.spawn(move || {
                    let mut c = node.client();
                    c.set_timeout(Duration::from_secs(60));
                    let r = get_auth(&mut c, path, tok);
                    assert_eq!(r.status, 200, "pull {i}: {}", r.text());
                    assert_eq!(sha256(&r.body), digest, "pull {i}");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// A TCP forwarder on loopback in front of a store, that can be switched
/// off (connections accepted and closed at once: the store "down") and on
/// again, on the same address, so that a node sees its store go and come
/// back. Its threads end with it (bounded: a 20 ms accept poll, 200 ms
/// reads).
pub struct Switch {
    pub addr: std::net::SocketAddr,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Switch {
    /// A forwarder to `to`, on.
    pub fn to(to: std::net::SocketAddr) -> Switch {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let on = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (on2, stop2) = (on.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if !on2.load(Ordering::Relaxed) {
                    drop(client); // refused, as a store that is down
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                let on3 = on2.clone();
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let on4 = on3.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        use std::io::{Read, Write};
                        // Ends when either side closes, or when switched off
                        // (checked between reads; reads time out at 200 ms).
                        let _ = a.set_read_timeout(Some(Duration::from_millis(200)));
                        loop {
                            if !on4.load(Ordering::Relaxed) {
                                break;
                            }
                            match a.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                        let _ = a.shutdown(std::net::Shutdown::Both);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Switch {
            addr,
            on,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// `http://<addr>`, the endpoint nodes are given.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
