//! Runs a hub double until killed, printing its URLs and CA path as one JSON line on stdout.
//!
//! ```text
//! hubdouble [--plain] [--no-log] [--registry ADDR] [--token ADDR] [--cdn ADDR]
//!           [--blob-size BYTES] [--blob-repo REPO] [--blob-tag TAG]
//!           [--extra-hops N] [--sig-ttl SECS] [--no-redirect] [--exit-on-stdin-eof]
//!           [--like ghcr|quay|gcr|k8s] [--redirect-all URL]
//! ```
//! `--like` applies the matching `Options::like_*` preset; `--redirect-all URL` is
//! `Options::redirect_all_to` (k8s.gcr.io-like).
//! `--blob-size` adds an image `REPO:TAG` (default `bench/big:latest`) with one random layer
//! of that many bytes (e.g. 1073741824); its digests are in the JSON under `"big"`.

use hubdouble::{Flavor, HubDouble, Options};
use serde_json::json;
use std::io::{Read, Write};
use std::process::exit;

fn usage(msg: &str) -> ! {
    eprintln!("hubdouble: {msg}");
    eprintln!(
        "usage: hubdouble [--plain] [--no-log] [--registry ADDR] [--token ADDR] [--cdn ADDR] \
         [--blob-size BYTES] [--blob-repo REPO] [--blob-tag TAG] [--extra-hops N] \
         [--sig-ttl SECS] [--no-redirect] [--exit-on-stdin-eof] \
         [--like ghcr|quay|gcr|k8s] [--redirect-all URL]"
    );
    exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a valid value")))
}

fn main() {
    let mut opts = Options::default();
    let mut blob_size: Option<usize> = None;
    let mut blob_repo = "bench/big".to_string();
    let mut blob_tag = "latest".to_string();
    let mut exit_on_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--plain" => opts.tls = false,
            "--no-log" => opts.log_requests = false,
            "--no-redirect" => opts.blob_redirect = false,
            "--registry" => opts.registry_addr = parse(&a, args.next()),
            "--token" => opts.token_addr = parse(&a, args.next()),
            "--cdn" => opts.cdn_addr = parse(&a, args.next()),
            "--blob-size" => blob_size = Some(parse(&a, args.next())),
            "--blob-repo" => blob_repo = parse(&a, args.next()),
            "--blob-tag" => blob_tag = parse(&a, args.next()),
            "--extra-hops" => opts.extra_hops = parse(&a, args.next()),
            "--sig-ttl" => opts.cdn_signature_ttl_secs = parse(&a, args.next()),
            "--exit-on-stdin-eof" => exit_on_eof = true,
            "--like" => {
                opts = match args.next().as_deref() {
                    Some("ghcr") => opts.like_ghcr(),
                    Some("quay") => opts.like_quay(),
                    Some("gcr") => opts.like_gcr(),
                    Some("k8s") => opts.like_registry_k8s(),
                    _ => usage("--like needs ghcr, quay, gcr or k8s"),
                }
            }
            "--redirect-all" => opts = opts.redirect_all_to(parse::<String>(&a, args.next())),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let hub = HubDouble::start(opts).unwrap_or_else(|e| {
        eprintln!("hubdouble: cannot start: {e}");
        exit(1)
    });
    let seeded = hub.seeded();
    let mut info = json!({
        "registry_url": hub.registry_url(),
        "registry_addr": hub.registry_addr().to_string(),
        "token_url": hub.token_url(),
        "token_addr": hub.token_addr().to_string(),
        "cdn_url": hub.cdn_url(),
        "cdn_addr": hub.cdn_addr().to_string(),
        "service": hub.service(),
        "tls": hub.is_tls(),
        "ca_pem_path": hub.ca_path().map(|p| p.display().to_string()),
        "images": {
            "library/alpine:latest": seeded.alpine.manifest.digest,
            "library/multi:latest": seeded.multi.manifest.digest,
            "private/secret:latest": seeded.secret.manifest.digest,
        },
    });
    if let Some(size) = blob_size {
        let img = hub.add_random_image(&blob_repo, &blob_tag, Flavor::Docker, &[size], 1);
        info["big"] = json!({
            "repo": blob_repo,
            "tag": blob_tag,
            "manifest_digest": img.manifest.digest,
            "layer_digest": img.layers[0].digest,
            "layer_size": img.layers[0].size,
        });
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{info}");
    let _ = out.flush();
    drop(out);
    if exit_on_eof {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        drop(hub);
        return;
    }
    loop {
        std::thread::park();
    }
}
