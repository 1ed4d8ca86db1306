//! Hot-path micro benchmarks (criterion), in ns per request:
//!
//! - `head/*`: find the end of a request head and parse it (`http::HeadScanner`,
//!   `http::parse_request_uninit` with `MAX_HEADERS` slots, as the connection loop does), for
//!   the request shapes real clients send (dockerd with one `Accept` line per media type and a
//!   bearer token, containerd's comma-joined `Accept` with `?ns=`, a blob GET with `Range`).
//! - `route/*`: `router::split_target` + `router::classify` on those targets.
//! - `rewrite/*`: the 401 challenge rewrite (`auth::parse_challenge`, `auth::write_rewritten`
//!   with `auth::map_scopes`), and building a manifest response head with
//!   `http::write_status` / `http::write_header`.
//! - `request/*`: head parse + route for one request, end to end.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a short run, or a filter such as
//! `-- route`). See BENCHMARKS.md for recorded numbers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ocirelay::route::classify::{classify, split_target, Route};
use ocirelay::wire::challenge::{map_scopes, parse_challenge, write_rewritten};
use ocirelay::wire::http::{
    parse_request_uninit, write_header, write_status, HeadScanner, MAX_HEADERS,
};
use ocirelay::wire::method::Method;
use std::hint::black_box;
use std::mem::MaybeUninit;

/// A bearer token of realistic size (Docker Hub's JWTs are ~1 KiB; this is 880 bytes).
fn fake_jwt() -> String {
    let mut s = String::from("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsIng1YyI6WyJNSUlF");
    while s.len() < 880 {
        s.push_str("QWxhZGRpbjpvcGVuIHNlc2FtZV9hYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk");
    }
    s.truncate(880);
    s
}

const DIGEST: &str = "sha256:4abcf20661432fb2d719aaf90656f55c287f8ca915dc1c92ec14ff61e67fbaf8";

/// dockerd (registry-mirrors): one `Accept` line per media type, bearer token.
fn dockerd_manifest_get(jwt: &str) -> Vec<u8> {
    format!(
        "GET /v2/library/alpine/manifests/3.20 HTTP/1.1\r\n\
         Host: mirror.example.com\r\n\
         User-Agent: docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.1.0-26-amd64 os/linux arch/amd64 UpstreamClient(Docker-Client/27.3.1 \\(linux\\))\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json\r\n\
         Accept: application/vnd.docker.distribution.manifest.list.v2+json\r\n\
         Accept: application/vnd.oci.image.index.v1+json\r\n\
         Accept: application/vnd.oci.image.manifest.v1+json\r\n\
         Accept: application/vnd.docker.distribution.manifest.v1+prettyjws\r\n\
         Accept: application/json\r\n\
         Authorization: Bearer {jwt}\r\n\
         Accept-Encoding: gzip\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// containerd (hosts.toml mirror): HEAD, one comma-joined `Accept`, `?ns=`.
fn containerd_manifest_head(jwt: &str) -> Vec<u8> {
    format!(
        "HEAD /v2/library/nginx/manifests/1.27?ns=docker.io HTTP/1.1\r\n\
         Host: mirror.example.com\r\n\
         User-Agent: containerd/v1.7.22\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*\r\n\
         Authorization: Bearer {jwt}\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    )
    .into_bytes()
}

/// containerd resuming a layer: blob GET with `Range`.
fn containerd_blob_get(jwt: &str) -> Vec<u8> {
    format!(
        "GET /v2/library/nginx/blobs/{DIGEST}?ns=docker.io HTTP/1.1\r\n\
         Host: mirror.example.com\r\n\
         User-Agent: containerd/v1.7.22\r\n\
         Accept: application/vnd.docker.image.rootfs.diff.tar.gzip, */*\r\n\
         Authorization: Bearer {jwt}\r\n\
         Range: bytes=1048576-\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    )
    .into_bytes()
}

/// The smallest thing a client sends: the API version check.
fn ping() -> Vec<u8> {
    b"GET /v2/ HTTP/1.1\r\nHost: mirror.example.com\r\nUser-Agent: docker/27.3.1\r\n\r\n".to_vec()
}

fn heads() -> Vec<(&'static str, Vec<u8>)> {
    let jwt = fake_jwt();
    vec![
        ("ping", ping()),
        ("dockerd_manifest_get", dockerd_manifest_get(&jwt)),
        ("containerd_manifest_head", containerd_manifest_head(&jwt)),
        ("containerd_blob_get", containerd_blob_get(&jwt)),
    ]
}

/// Parses a head exactly as the connection loop does: find the end (in one read, or as
/// bytes arrive in `chunk`-sized reads), then parse with `MAX_HEADERS` header slots.
fn parse_once(raw: &[u8], chunk: usize) -> usize {
    let mut end = None;
    let mut scanner = HeadScanner::new();
    let mut have = chunk.min(raw.len());
    while end.is_none() {
        end = scanner.scan(&raw[..have]).expect("CRLF lines");
        if have == raw.len() {
            break;
        }
        have = (have + chunk).min(raw.len());
    }
    let end = end.expect("complete head");
    let mut storage = [MaybeUninit::uninit(); MAX_HEADERS];
    let head = parse_request_uninit(&raw[..end], &mut storage).expect("valid head");
    head.head_len + head.headers.len()
}

fn bench_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("head");
    for (name, raw) in heads() {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("parse", name), &raw, |b, raw| {
            b.iter(|| parse_once(black_box(raw), usize::MAX))
        });
    }
    // The same dockerd head arriving in 512-byte reads (the end is searched incrementally).
    let raw = dockerd_manifest_get(&fake_jwt());
    g.bench_with_input(
        BenchmarkId::new("parse_in_512B_reads", "dockerd_manifest_get"),
        &raw,
        |b, raw| b.iter(|| parse_once(black_box(raw), 512)),
    );
    g.finish();
}

fn route_targets() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("ping", "/v2/".to_string(), "GET"),
        (
            "token",
            "/token?scope=repository%3Alibrary%2Falpine%3Apull&service=registry.docker.io"
                .to_string(),
            "GET",
        ),
        (
            "manifest_tag",
            "/v2/library/alpine/manifests/3.20".to_string(),
            "GET",
        ),
        (
            "manifest_head_ns",
            "/v2/library/nginx/manifests/1.27?ns=docker.io".to_string(),
            "HEAD",
        ),
        (
            "manifest_digest_prefixed",
            format!("/v2/ghcr.io/owner/team/image/manifests/{DIGEST}"),
            "GET",
        ),
        (
            "blob",
            format!("/v2/library/nginx/blobs/{DIGEST}?ns=docker.io"),
            "GET",
        ),
        ("not_found", "/favicon.ico".to_string(), "GET"),
    ]
}

fn route_label(method: &str, target: &str) -> usize {
    let (path, query) = split_target(target);
    let r: Route<'_> = classify(Method::parse(method), path);
    r.label().len() + query.map_or(0, str::len)
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (name, target, method) in route_targets() {
        g.bench_with_input(BenchmarkId::new("classify", name), &target, |b, t| {
            b.iter(|| route_label(black_box(method), black_box(t)))
        });
    }
    g.finish();
}

const HUB_CHALLENGE: &[u8] = br#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;

fn rewrite_challenge(value: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let ch = parse_challenge(value).expect("challenge");
    out.extend_from_slice(b"WWW-Authenticate: ");
    write_rewritten(out, &ch, "https://mirror.example.com/token", |scopes| {
        map_scopes(scopes, |name| {
            name.strip_prefix("library/").map(|short| short.to_string())
        })
    });
    out.extend_from_slice(b"\r\n");
    out.len()
}

/// The response head ocirelay writes for a manifest GET relayed from Docker Hub.
fn manifest_response_head(out: &mut Vec<u8>) -> usize {
    out.clear();
    write_status(out, 200);
    write_header(
        out,
        "Content-Type",
        b"application/vnd.docker.distribution.manifest.list.v2+json",
    );
    write_header(out, "Content-Length", b"1863");
    write_header(out, "Docker-Content-Digest", DIGEST.as_bytes());
    let mut etag = Vec::with_capacity(80);
    etag.push(b'"');
    etag.extend_from_slice(DIGEST.as_bytes());
    etag.push(b'"');
    write_header(out, "Etag", &etag);
    write_header(out, "Docker-Distribution-Api-Version", b"registry/2.0");
    write_header(out, "ratelimit-limit", b"100;w=21600");
    write_header(out, "ratelimit-remaining", b"76;w=21600");
    write_header(out, "docker-ratelimit-source", b"203.0.113.7");
    write_header(out, "Date", b"Sat, 22 Nov 2025 08:00:00 GMT");
    write_header(out, "Strict-Transport-Security", b"max-age=31536000");
    out.extend_from_slice(b"\r\n");
    out.len()
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("parse_challenge", |b| {
        b.iter(|| parse_challenge(black_box(HUB_CHALLENGE)).map(|c| c.params.len()))
    });
    g.bench_function("challenge_parse_and_rewrite", |b| {
        b.iter(|| rewrite_challenge(black_box(HUB_CHALLENGE), &mut out))
    });
    let scopes =
        "repository:library/alpine:pull repository:library/nginx:pull,push registry:catalog:*";
    g.bench_function("map_scopes", |b| {
        b.iter(|| {
            map_scopes(black_box(scopes), |name| {
                name.strip_prefix("library/").map(|s| s.to_string())
            })
            .len()
        })
    });
    g.bench_function("manifest_response_head", |b| {
        b.iter(|| manifest_response_head(black_box(&mut out)))
    });
    g.finish();
}

fn bench_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in heads() {
        g.bench_with_input(BenchmarkId::new("parse_and_route", name), &raw, |b, raw| {
            b.iter(|| {
                let raw = black_box(raw.as_slice());
                let end = HeadScanner::new()
                    .scan(raw)
                    .ok()
                    .flatten()
                    .expect("complete head");
                let mut storage = [MaybeUninit::uninit(); MAX_HEADERS];
                let head = parse_request_uninit(&raw[..end], &mut storage).expect("valid head");
                route_label(head.method_text, head.target) + head.headers.len()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_head,
    bench_route,
    bench_rewrite,
    bench_request
);
criterion_main!(benches);
