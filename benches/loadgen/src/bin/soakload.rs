//! The soak's Docker Hub double and mixed load (`benches/soak.sh`).
//!
//! ```text
//! soakload --info FILE --relay ADDR [--duration SECS] [--threads N] [--big-size BYTES]
//!          [--max-requests N]
//! ```
//! Starts the double (TLS, no auth: the load is about the relay's memory and descriptors,
//! not the token flow) and writes its registry URL and CA path as one JSON line to FILE, for
//! the script to configure ocirelay with. Then waits (at most 60 s) for ADDR (the relay's
//! plain-HTTP listener) and runs `--threads` clients until `--duration` seconds or
//! `--max-requests` requests have passed, each cycling through the mix:
//!
//! - manifest by tag and by digest (`library/alpine`; hits after the first);
//! - the small layers of that image (hits);
//! - the big blob (`--big-size`, default 16 MiB): whole, a range, and a download cut off
//!   after a part (the client hangs up mid-body);
//! - a fresh blob (32-256 KiB) added to the double just before: a cache miss every time;
//!   forgotten by the double once fetched, so that the double stays flat too.
//!
//! Every body is checked (length and sha256, or the range's bytes). Prints one JSON line
//! of counts per kind; exit status 1 if a response was wrong.

use hubdouble::client::Client;
use hubdouble::{HubDouble, Options};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KINDS: [&str; 8] = [
    "manifest_tag",
    "manifest_digest",
    "small_blob",
    "big_blob",
    "big_range",
    "big_cancelled",
    "fresh_blob",
    "wrong",
];

fn usage(msg: &str) -> ! {
    eprintln!("soakload: {msg}");
    eprintln!(
        "usage: soakload --info FILE --relay ADDR [--duration SECS] [--threads N] \
         [--big-size BYTES] [--max-requests N]"
    );
    exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a valid value")))
}

struct Load {
    hub: HubDouble,
    relay: SocketAddr,
    big: String,
    big_size: usize,
    deadline: Instant,
    max_requests: u64,
    requests: AtomicU64,
    fresh_seed: AtomicU64,
    counts: [AtomicU64; KINDS.len()],
    failed: AtomicBool,
}

impl Load {
    fn count(&self, kind: usize) {
        self.counts[kind].fetch_add(1, Ordering::Relaxed);
    }

    fn wrong(&self, what: String) {
        eprintln!("soakload: WRONG: {what}");
        self.count(7);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn more(&self) -> bool {
        Instant::now() < self.deadline
            && self.requests.fetch_add(1, Ordering::Relaxed) < self.max_requests
    }

    /// GET `target`; the body must hash to `digest` (or equal `want`).
    fn get(
        &self,
        c: &mut Client,
        kind: usize,
        target: &str,
        headers: &[(&str, &str)],
        want: Check,
    ) {
        // A connection the relay closed meanwhile (idle timeout) is not
        // wrong: one more try on a new one.
        for attempt in 0..2 {
            match c.get_with(target, headers) {
                Ok(r) => {
                    let ok = match want {
                        Check::Digest(d) => {
                            r.status == 200 && hubdouble::sha256_digest(&r.body) == d
                        }
                        Check::Bytes(b) => r.status == 206 && r.body == b,
                    };
                    if ok {
                        self.count(kind);
                    } else {
                        self.wrong(format!("{target}: {} ({} bytes)", r.status, r.body.len()));
                    }
                    return;
                }
                Err(e) => {
                    c.disconnect();
                    if attempt == 1 {
                        self.wrong(format!("{target}: {e}"));
                    }
                }
            }
        }
    }

    /// Starts a download of the big blob and hangs up after `after` bytes of it.
    fn cancelled(&self, after: usize) {
        let Ok(mut s) = TcpStream::connect(self.relay) else {
            return self.wrong("connect".into());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let req = format!(
            "GET /v2/soak/big/blobs/{} HTTP/1.1\r\nHost: soak\r\n\r\n",
            self.big
        );
        if s.write_all(req.as_bytes()).is_err() {
            return self.wrong("write".into());
        }
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < after {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return self.wrong(format!("cut at {got}")),
                Ok(n) => got += n,
            }
        }
        self.count(5);
        // Dropped here, mid-body: RST or FIN, with data unread.
    }

    fn client(&self, id: u64) {
        let seeded = self.hub.seeded();
        let alpine = &seeded.alpine;
        let tag = format!("/v2/{}/manifests/{}", alpine.repo, alpine.tag);
        let by_digest = format!("/v2/{}/manifests/{}", alpine.repo, alpine.manifest.digest);
        let big = format!("/v2/soak/big/blobs/{}", self.big);
        let big_bytes = self.hub.content().blob(&self.big).expect("big blob");
        let mut c = Client::new(self.relay, None).unwrap_or_else(|e| usage(&format!("{e}")));
        c.set_timeout(Duration::from_secs(60));
        let accept = [(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )];
        let mut step = id;
        while self.more() {
            step += 1;
            match step % 10 {
                0 | 5 => self.get(
                    &mut c,
                    0,
                    &tag,
                    &accept,
                    Check::Digest(&alpine.manifest.digest),
                ),
                1 | 6 => self.get(
                    &mut c,
                    1,
                    &by_digest,
                    &accept,
                    Check::Digest(&alpine.manifest.digest),
                ),
                2 | 7 => {
                    let l = &alpine.layers[(step as usize / 10) % alpine.layers.len()];
                    let p = format!("/v2/{}/blobs/{}", alpine.repo, l.digest);
                    self.get(&mut c, 2, &p, &[], Check::Digest(&l.digest));
                }
                3 => self.get(&mut c, 3, &big, &[], Check::Digest(&self.big)),
                4 => {
                    let n = self.big_size as u64;
                    let a = (step * 7919 * 4096) % (n - 1);
                    let b = (a + 1 + (step * 104_729) % (4 << 20)).min(n - 1);
                    let range = format!("bytes={a}-{b}");
                    let want = &big_bytes[a as usize..=b as usize];
                    self.get(&mut c, 4, &big, &[("Range", &range)], Check::Bytes(want));
                }
                8 => self.cancelled(1 + (step as usize * 7919) % (self.big_size / 2)),
                _ => {
                    let seed = self.fresh_seed.fetch_add(1, Ordering::Relaxed);
                    let size = (32 << 10) * (1 + (seed as usize % 8));
                    let d = self.hub.add_random_blob("soak/fresh", size, seed);
                    let p = format!("/v2/soak/fresh/blobs/{d}");
                    self.get(&mut c, 6, &p, &[], Check::Digest(&d));
                    self.hub.content().forget_blob(&d);
                }
            }
        }
    }
}

enum Check<'a> {
    Digest(&'a str),
    Bytes(&'a [u8]),
}

fn main() {
    let mut info: Option<String> = None;
    let mut relay: Option<SocketAddr> = None;
    let mut duration = 60u64;
    let mut threads = 4u64;
    let mut big_size = 16usize << 20;
    let mut max_requests = u64::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--info" => info = Some(parse(&a, args.next())),
            "--relay" => relay = Some(parse(&a, args.next())),
            "--duration" => duration = parse(&a, args.next()),
            "--threads" => threads = parse(&a, args.next()),
            "--big-size" => big_size = parse(&a, args.next()),
            "--max-requests" => max_requests = parse(&a, args.next()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let (Some(info), Some(relay)) = (info, relay) else {
        usage("--info and --relay are needed")
    };
    let opts = Options {
        require_auth: false,
        log_requests: false,
        ..Options::default()
    };
    let hub = HubDouble::start(opts).unwrap_or_else(|e| usage(&format!("double: {e}")));
    let big = hub.add_random_blob("soak/big", big_size, 1);
    let line = json!({
        "registry_url": hub.registry_url(),
        "ca_pem_path": hub.ca_path().map(|p| p.display().to_string()),
    });
    std::fs::write(&info, format!("{line}\n")).unwrap_or_else(|e| usage(&format!("{info}: {e}")));

    let up = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(relay).is_err() {
        if Instant::now() > up {
            usage(&format!("the relay at {relay} did not come up"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let load = Arc::new(Load {
        hub,
        relay,
        big,
        big_size,
        deadline: Instant::now() + Duration::from_secs(duration),
        max_requests,
        requests: AtomicU64::new(0),
        fresh_seed: AtomicU64::new(1000),
        counts: Default::default(),
        failed: AtomicBool::new(false),
    });
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|id| {
            let l = load.clone();
            std::thread::spawn(move || l.client(id * 3))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut out = serde_json::Map::new();
    for (i, k) in KINDS.iter().enumerate() {
        out.insert((*k).into(), load.counts[i].load(Ordering::Relaxed).into());
    }
    out.insert("secs".into(), started.elapsed().as_secs().into());
    println!("{}", serde_json::Value::Object(out));
    if load.failed.load(Ordering::Relaxed) {
        exit(1);
    }
}
