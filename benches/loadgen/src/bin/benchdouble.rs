//! Starts the Docker Hub double (`tests/hubdouble`: registry 127.0.0.1, token host
//! 127.0.0.2, signed-URL CDN 127.0.0.3, TLS with its own CA, 307 blob redirects) with the
//! two images the benchmark pulls, prints one JSON line, and serves until stdin closes
//! (or it is killed).
//!
//! ```text
//! benchdouble [--big-size BYTES] [--small-layers N]
//! ```
//! - `bench/small:latest`: a manifest of ~2 KiB (`--small-layers` layers, default 11); its
//!   first layer is a 1 MiB blob, the others 4 KiB.
//! - `bench/big:latest`: one layer of `--big-size` bytes (default 1 GiB).
//!
//! The same thing as `target/release/hubdouble --blob-size N`, plus the second image (the
//! hubdouble binary adds only one).

use hubdouble::{Flavor, HubDouble, Options};
use serde_json::json;
use std::io::{Read, Write};
use std::process::exit;

fn main() {
    let mut big_size: usize = 1 << 30;
    let mut small_layers: usize = 11;
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
            "--small-layers" => small_layers = num("--small-layers").max(1),
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
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{info}");
    let _ = out.flush();
    drop(out);
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    drop(hub);
}
