//! Starts the Docker Hub double (`tests/hubdouble`: registry 127.0.0.1, token host
//! 127.0.0.2, signed-URL CDN 127.0.0.3, TLS with its own CA, 307 blob redirects) with the
//! two images the benchmark pulls, prints one JSON line, and serves until stdin closes
//! (or it is killed).
//!
//! ```text
//! benchdouble [--big-size BYTES] [--mid-size BYTES] [--small-layers N] [--counts SOCKET]
//! ```
//! - `bench/small:latest`: a manifest of ~2 KiB (`--small-layers` layers, default 11); its
//!   first layer is a 1 MiB blob, the others 4 KiB.
//! - `bench/big:latest`: one layer of `--big-size` bytes (default 1 GiB).
//! - `bench/mid:latest`: one layer of `--mid-size` bytes (default 0: no such image), for the
//!   coalescing workload of `benches/cache.sh` (200 MiB there).
//!
//! With `--counts SOCKET` the double can count the requests it receives, per host and kind of
//! request (`registry_manifest_get`, `registry_blob_get`, `token`, `cdn_get`, ...; see
//! [`kind`]): the upstream fetches a proxy made, counted by the upstream itself. A client of
//! the Unix socket SOCKET sends one line, `on`, `off` or `counts`, and gets one JSON line of
//! the cumulative counts. `on` starts recording (the double's request log), `off` stops it.
//! Recording is off at start and between counted runs: it costs the double ~10% of its
//! manifest throughput, which would flatter every ratio to direct. `seq` is the number of
//! requests counted so far and `lost` how many went uncounted (the log can only be copied,
//! then cleared: a request recorded in between is lost, which shows as a gap in `seq`). The
//! load generator turns recording on right before its measurement and off right after
//! (`loadgen --upstream-counts`), when nothing else asks, so `lost` stays 0.
//!
//! The same thing as `target/release/hubdouble --blob-size N`, plus the second image (the
//! hubdouble binary adds only one).

use hubdouble::{Flavor, Host, HubDouble, LogEntry, Options, RequestLog};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a request asked of which host: the unit the counts are kept in.
fn kind(e: &LogEntry) -> &'static str {
    let head = e.method == "HEAD";
    let path = e.path();
    match e.host {
        Host::Token => "token",
        Host::Cdn if e.has_header("range") => "cdn_range_get",
        Host::Cdn if head => "cdn_head",
        Host::Cdn if e.method == "GET" => "cdn_get",
        Host::Cdn => "cdn_other",
        Host::Registry if path == "/v2/" || path == "/v2" => "registry_ping",
        Host::Registry if path.contains("/manifests/") && head => "registry_manifest_head",
        Host::Registry if path.contains("/manifests/") => "registry_manifest_get",
        Host::Registry if path.contains("/blobs/uploads") => "registry_other",
        Host::Registry if path.contains("/blobs/") && head => "registry_blob_head",
        Host::Registry if path.contains("/blobs/") => "registry_blob_get",
        Host::Registry => "registry_other",
    }
}

/// Cumulative counts of the requests taken out of the log so far.
#[derive(Default)]
struct Counts {
    by_kind: BTreeMap<&'static str, u64>,
    /// One past the highest `seq` counted.
    next_seq: u64,
    lost: u64,
}

impl Counts {
    /// Moves what the log holds into the counts. Only a copy and a clear are offered by the
    /// log, so a request recorded between the two is lost; the gap in `seq` counts it.
    fn drain(&mut self, log: &RequestLog) {
        let entries = log.entries();
        log.clear();
        for e in &entries {
            self.lost += e.seq.saturating_sub(self.next_seq);
            self.next_seq = self.next_seq.max(e.seq + 1);
            *self.by_kind.entry(kind(e)).or_default() += 1;
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.by_kind {
            m.insert((*k).to_string(), json!(v));
        }
        m.insert("seq".into(), json!(self.next_seq));
        m.insert("lost".into(), json!(self.lost));
        serde_json::Value::Object(m)
    }
}

/// Serves the counts on a Unix socket (one JSON line per connection), and keeps the log
/// small: a run of manifest GETs records ~10^5 requests per second of load.
fn serve_counts(path: &str, log: Arc<RequestLog>) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap_or_else(|e| {
        eprintln!("benchdouble: cannot listen on {path}: {e}");
        exit(1)
    });
    let counts = Arc::new(Mutex::new(Counts::default()));
    {
        let (counts, log) = (counts.clone(), log.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if log.len() > 200_000 {
                counts.lock().unwrap_or_else(|e| e.into_inner()).drain(&log);
            }
        });
    }
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut cmd = String::new();
            let mut r = BufReader::new(&s);
            let _ = r.read_line(&mut cmd);
            let line = {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                match cmd.trim() {
                    "on" => {
                        c.drain(&log);
                        log.set_enabled(true);
                    }
                    "off" => {
                        log.set_enabled(false);
                        c.drain(&log);
                    }
                    _ => c.drain(&log),
                }
                c.json().to_string()
            };
            let _ = writeln!(&s, "{line}");
        }
    });
}

fn main() {
    let mut big_size: usize = 1 << 30;
    let mut mid_size: usize = 0;
    let mut small_layers: usize = 11;
    let mut counts_socket: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |flag: &str| -> usize {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("benchdouble: {flag} needs a number");
                exit(2)
            })
        };
        match a.as_str() {
            "--big-size" => big_size = num("--big-size"),
            "--mid-size" => mid_size = num("--mid-size"),
            "--small-layers" => small_layers = num("--small-layers").max(1),
            "--counts" => {
                counts_socket = Some(args.next().unwrap_or_else(|| {
                    eprintln!("benchdouble: --counts needs a socket path");
                    exit(2)
                }))
            }
            other => {
                eprintln!("benchdouble: unknown argument {other}");
                exit(2)
            }
        }
    }
    let hub = HubDouble::start(Options::default().log_requests(false)).unwrap_or_else(|e| {
        eprintln!("benchdouble: cannot start the double: {e}");
        exit(1)
    });
    let mut sizes = vec![4096usize; small_layers];
    sizes[0] = 1 << 20;
    let small = hub.add_random_image("bench/small", "latest", Flavor::Docker, &sizes, 7);
    let big = hub.add_random_image("bench/big", "latest", Flavor::Docker, &[big_size], 1000);
    let mid = (mid_size > 0)
        .then(|| hub.add_random_image("bench/mid", "latest", Flavor::Docker, &[mid_size], 2000));
    let small_manifest_len = small.manifest_bytes.len();
    let info = json!({
        "registry_url": hub.registry_url(),
        "token_url": hub.token_url(),
        "cdn_url": hub.cdn_url(),
        "registry_addr": hub.registry_addr().to_string(),
        "token_addr": hub.token_addr().to_string(),
        "cdn_addr": hub.cdn_addr().to_string(),
        "service": hub.service(),
        "ca_pem_path": hub.ca_path().map(|p| p.display().to_string()),
        "small": {
            "repo": "bench/small",
            "tag": "latest",
            "manifest_digest": small.manifest.digest,
            "manifest_size": small_manifest_len,
            "layer_digest": small.layers[0].digest,
            "layer_size": small.layers[0].size,
        },
        "big": {
            "repo": "bench/big",
            "tag": "latest",
            "manifest_digest": big.manifest.digest,
            "layer_digest": big.layers[0].digest,
            "layer_size": big.layers[0].size,
        },
        "mid": mid.map(|m| json!({
            "repo": "bench/mid",
            "tag": "latest",
            "manifest_digest": m.manifest.digest,
            "layer_digest": m.layers[0].digest,
            "layer_size": m.layers[0].size,
        })),
        "counts_socket": counts_socket,
    });
    // Listening before the line is printed: whoever reads it may connect at once.
    if let Some(path) = &counts_socket {
        serve_counts(path, hub.log_handle());
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{info}");
    let _ = out.flush();
    drop(out);
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(hub);
    if let Some(path) = &counts_socket {
        let _ = std::fs::remove_file(path);
    }
}
