//! HTTP/1.1 load generator for the registry workloads of BENCHMARKS.md.
//!
//! One measurement per run; prints one JSON line. Blocking threads, one connection (or one
//! connection per origin, for redirects) per thread; rustls (ring) for TLS with session
//! resumption off, AES-128-GCM offered first (as Go clients such as docker do).
//!
//! ```text
//! loadgen --base URL --workload KIND [--ca FILE]... [--repo R] [--reference REF]
//!         [--digest sha256:..] [--size BYTES] [--conns N] [--duration SECS]
//!         [--max-requests N] [--timeout SECS] [--proxy-pid PID]... [--upstream-pid PID]
//!         [--expect-realm URL-PREFIX] [--label KEY=VALUE]... [--anonymous]
//!         [--upstream-counts SOCKET] [--settle SECS]
//! ```
//! Workloads (each first does the token flow through `--base`: a GET without credentials
//! must answer 401 with a Bearer challenge whose realm then hands out the token):
//! - `token`: GET `<realm>?service=..&scope=repository:R:pull` (the realm the target gave);
//! - `manifest-get` / `manifest-head`: GET/HEAD `/v2/R/manifests/REF` with the token, keep-alive;
//!   GET bodies are checked against `--digest` (sha256);
//! - `cold`: `manifest-get` on a new connection (TCP + full TLS handshake) per request;
//! - `blob`: GET `/v2/R/blobs/DIGEST`, following redirects (any origin, without
//!   `Authorization`, as clients do for the CDN), body checked for `--size` and sha256.
//!
//! With `--anonymous` there is no token flow and no `Authorization`: for a target that asks
//! its clients for no credentials (distribution's pull-through cache without `auth:`).
//!
//! With `--upstream-counts` (the socket of `benchdouble --counts`) the output carries
//! `upstream`: the requests the double received, by kind, between the end of the setup and
//! `--settle` seconds (0.3) after the last response: the upstream fetches the measured
//! requests caused. The double records requests only for that time (recording slows it).
//!
//! Bounds: new requests stop after `--duration` seconds or `--max-requests`; every socket
//! operation times out after `--timeout`; a watchdog ends the process at
//! duration + timeout + 10 s whatever happens.
//!
//! With `--proxy-pid` (repeatable; descendants included, e.g. nginx workers) the run also
//! reports the proxy's CPU seconds (utime+stime from /proc/PID/stat, delta over the run) and
//! peak RSS during the run (VmHWM, reset through /proc/PID/clear_refs before the run).

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- options

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Token,
    ManifestGet,
    ManifestHead,
    Cold,
    Blob,
}

struct Opts {
    base: String,
    workload: Workload,
    cas: Vec<String>,
    repo: String,
    reference: String,
    digest: Option<String>,
    size: Option<u64>,
    conns: usize,
    duration: f64,
    max_requests: u64,
    timeout: f64,
    proxy_pids: Vec<u32>,
    upstream_pid: Option<u32>,
    expect_realm: Option<String>,
    labels: Vec<(String, String)>,
    anonymous: bool,
    upstream_counts: Option<String>,
    settle: f64,
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        base: String::new(),
        workload: Workload::ManifestGet,
        cas: Vec::new(),
        repo: "bench/small".into(),
        reference: "latest".into(),
        digest: None,
        size: None,
        conns: 1,
        duration: 3.0,
        max_requests: 10_000_000,
        timeout: 30.0,
        proxy_pids: Vec::new(),
        upstream_pid: None,
        expect_realm: None,
        labels: Vec::new(),
        anonymous: false,
        upstream_counts: None,
        settle: 0.3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--base" => o.base = val().trim_end_matches('/').to_string(),
            "--workload" => {
                o.workload = match val().as_str() {
                    "token" => Workload::Token,
                    "manifest-get" => Workload::ManifestGet,
                    "manifest-head" => Workload::ManifestHead,
                    "cold" => Workload::Cold,
                    "blob" => Workload::Blob,
                    w => die(&format!("unknown workload {w}")),
                }
            }
            "--ca" => o.cas.push(val()),
            "--repo" => o.repo = val(),
            "--reference" => o.reference = val(),
            "--digest" => o.digest = Some(val()),
            "--size" => o.size = Some(val().parse().unwrap_or_else(|_| die("bad --size"))),
            "--conns" => o.conns = val().parse().unwrap_or_else(|_| die("bad --conns")),
            "--duration" => o.duration = val().parse().unwrap_or_else(|_| die("bad --duration")),
            "--max-requests" => {
                o.max_requests = val().parse().unwrap_or_else(|_| die("bad --max-requests"))
            }
            "--timeout" => o.timeout = val().parse().unwrap_or_else(|_| die("bad --timeout")),
            "--proxy-pid" => o
                .proxy_pids
                .push(val().parse().unwrap_or_else(|_| die("bad --proxy-pid"))),
            "--upstream-pid" => {
                o.upstream_pid = Some(val().parse().unwrap_or_else(|_| die("bad --upstream-pid")))
            }
            "--expect-realm" => o.expect_realm = Some(val()),
            "--anonymous" => o.anonymous = true,
            "--upstream-counts" => o.upstream_counts = Some(val()),
            "--settle" => o.settle = val().parse().unwrap_or_else(|_| die("bad --settle")),
            "--label" => {
                let v = val();
                let (k, v) = v
                    .split_once('=')
                    .unwrap_or_else(|| die("--label KEY=VALUE"));
                o.labels.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                eprintln!("see the doc comment at the top of benches/loadgen/src/bin/loadgen.rs");
                exit(0)
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    if o.base.is_empty() {
        die("--base is required");
    }
    if o.conns == 0 || o.conns > 1024 {
        die("--conns must be 1..=1024");
    }
    let in_range = |x: f64| x > 0.0 && x <= 3600.0;
    if !in_range(o.duration) || !in_range(o.timeout) || !(0.0..=60.0).contains(&o.settle) {
        die("--duration and --timeout must be in (0, 3600]");
    }
    if o.workload == Workload::Blob && o.digest.is_none() {
        die("blob needs --digest");
    }
    o
}

// ---------------------------------------------------------------- URLs

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn to_url(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// Splits an absolute http(s) URL into origin and path-with-query.
fn parse_url(url: &str) -> Result<(Origin, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("not an http(s) URL: {url}"));
    };
    let (auth, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_string(),
            p.parse().map_err(|_| format!("bad port in {url}"))?,
        ),
        _ => (auth.to_string(), if tls { 443 } else { 80 }),
    };
    Ok((Origin { tls, host, port }, path))
}

/// Resolves a `Location` against the URL it came from.
fn resolve_location(origin: &Origin, path: &str, loc: &str) -> Result<(Origin, String), String> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        parse_url(loc)
    } else if let Some(rest) = loc.strip_prefix("//") {
        parse_url(&format!(
            "{}://{rest}",
            if origin.tls { "https" } else { "http" }
        ))
    } else if loc.starts_with('/') {
        Ok((origin.clone(), loc.to_string()))
    } else {
        let dir = match path.split('?').next().unwrap_or("/").rfind('/') {
            Some(i) => &path[..=i],
            None => "/",
        };
        Ok((origin.clone(), format!("{dir}{loc}")))
    }
}

fn loopback_addr(o: &Origin) -> io::Result<SocketAddr> {
    let addr = (o.host.trim_start_matches('[').trim_end_matches(']'), o.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    // The benchmark talks to loopback only.
    if !addr.ip().is_loopback() {
        return Err(io::Error::other(format!("refusing non-loopback {addr}")));
    }
    Ok(addr)
}

// ---------------------------------------------------------------- connections

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Conn {
    s: Stream,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

const READ_BUF: usize = 256 * 1024;

impl Conn {
    fn open(o: &Origin, tls: &Arc<rustls::ClientConfig>, timeout: Duration) -> io::Result<Conn> {
        let addr = loopback_addr(o)?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let s = if o.tls {
            let name = ServerName::try_from(o.host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| io::Error::other(format!("server name: {e}")))?
                .to_owned();
            let c = rustls::ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
            let mut s = Box::new(rustls::StreamOwned::new(c, tcp));
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            Stream::Tls(s)
        } else {
            Stream::Plain(tcp)
        };
        Ok(Conn {
            s,
            buf: vec![0; READ_BUF],
            pos: 0,
            end: 0,
        })
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let n = self.s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// What a response carried that the workloads care about.
struct Resp {
    status: u16,
    location: Option<String>,
    www_authenticate: Option<String>,
    content_digest: Option<String>,
    close: bool,
    body_len: u64,
    body_sha256: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Count the bytes only.
    Count,
    /// Count and sha256.
    Hash,
    /// Keep the bytes (small setup responses).
    Keep,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `req` on `c` and reads the whole response.
fn exchange(c: &mut Conn, req: &[u8], head_only: bool, body: Body) -> io::Result<Resp> {
    c.s.write_all(req)?;
    c.s.flush()?;
    // ---- head
    let (status, head_len, mut r, framing) = loop {
        if c.end > c.pos {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut p = httparse::Response::new(&mut hs);
            match p.parse(&c.buf[c.pos..c.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = p.code.unwrap_or(0);
                    let mut r = Resp {
                        status,
                        location: None,
                        www_authenticate: None,
                        content_digest: None,
                        close: p.version == Some(0),
                        body_len: 0,
                        body_sha256: None,
                        body: Vec::new(),
                    };
                    let mut length: Option<u64> = None;
                    let mut chunked = false;
                    for h in p.headers.iter() {
                        let v = || String::from_utf8_lossy(h.value).trim().to_string();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = v().parse().ok();
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = v().to_ascii_lowercase().contains("chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = v().to_ascii_lowercase();
                            if v.contains("close") {
                                r.close = true;
                            } else if v.contains("keep-alive") {
                                r.close = false;
                            }
                        } else if h.name.eq_ignore_ascii_case("location") {
                            r.location = Some(v());
                        } else if h.name.eq_ignore_ascii_case("www-authenticate") {
                            r.www_authenticate = Some(v());
                        } else if h.name.eq_ignore_ascii_case("docker-content-digest") {
                            r.content_digest = Some(v());
                        }
                    }
                    let framing = if head_only || status == 204 || status == 304 || status < 200 {
                        Framing::None
                    } else if chunked {
                        Framing::Chunked
                    } else if let Some(n) = length {
                        Framing::Length(n)
                    } else {
                        Framing::Eof
                    };
                    break (status, n, r, framing);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(io::Error::other(format!("bad response head: {e}"))),
            }
        }
        if c.end - c.pos == c.buf.len() {
            return Err(io::Error::other("response head too large"));
        }
        if c.fill()? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before head",
            ));
        }
    };
    let _ = status;
    c.pos += head_len;
    // ---- body
    let mut ctx = (body == Body::Hash).then(|| ring::digest::Context::new(&ring::digest::SHA256));
    let mut sink = |bytes: &[u8], r: &mut Resp| {
        r.body_len += bytes.len() as u64;
        match body {
            Body::Count => {}
            Body::Hash => ctx.as_mut().expect("hash").update(bytes),
            Body::Keep => {
                if r.body.len() < 1 << 20 {
                    r.body.extend_from_slice(bytes)
                }
            }
        }
    };
    match framing {
        Framing::None => {}
        Framing::Length(mut left) => {
            while left > 0 {
                if c.pos == c.end && c.fill()? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
                }
                let take = ((c.end - c.pos) as u64).min(left) as usize;
                sink(&c.buf[c.pos..c.pos + take], &mut r);
                c.pos += take;
                left -= take as u64;
            }
        }
        Framing::Eof => {
            loop {
                if c.pos == c.end && c.fill()? == 0 {
                    break;
                }
                sink(&c.buf[c.pos..c.end], &mut r);
                c.pos = c.end;
            }
            r.close = true;
        }
        Framing::Chunked => loop {
            // chunk-size line
            let line_end = loop {
                if let Some(i) = c.buf[c.pos..c.end].windows(2).position(|w| w == b"\r\n") {
                    break c.pos + i;
                }
                if c.fill()? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk size"));
                }
            };
            let line = std::str::from_utf8(&c.buf[c.pos..line_end]).unwrap_or("");
            let size_txt = line.split(';').next().unwrap_or("").trim();
            let mut left = u64::from_str_radix(size_txt, 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            c.pos = line_end + 2;
            if left == 0 {
                // trailers until an empty line
                loop {
                    let e = loop {
                        if let Some(i) = c.buf[c.pos..c.end].windows(2).position(|w| w == b"\r\n") {
                            break c.pos + i;
                        }
                        if c.fill()? == 0 {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "trailer"));
                        }
                    };
                    let empty = e == c.pos;
                    c.pos = e + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            while left > 0 {
                if c.pos == c.end && c.fill()? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short chunk"));
                }
                let take = ((c.end - c.pos) as u64).min(left) as usize;
                sink(&c.buf[c.pos..c.pos + take], &mut r);
                c.pos += take;
                left -= take as u64;
            }
            while c.end - c.pos < 2 {
                if c.fill()? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk end"));
                }
            }
            c.pos += 2;
        },
    }
    if let Some(ctx) = ctx {
        r.body_sha256 = Some(format!("sha256:{}", hex(ctx.finish().as_ref())));
    }
    Ok(r)
}

#[derive(Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Eof,
}

fn request_bytes(method: &str, o: &Origin, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let default_port = if o.tls { 443 } else { 80 };
    let host = if o.port == default_port {
        o.host.clone()
    } else {
        format!("{}:{}", o.host, o.port)
    };
    let mut s =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ocirelay-loadgen/0\r\n");
    for (k, v) in extra {
        s.push_str(k);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

// ---------------------------------------------------------------- token flow

fn challenge_params(v: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let rest = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest,
        _ => return out,
    };
    let mut s = rest.trim();
    while let Some(eq) = s.find('=') {
        let name = s[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(q) = s.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_string();
            s = q.get(end + 1..).unwrap_or("");
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        out.insert(name, value);
        s = s.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token flow a client does: unauthenticated GET -> 401 challenge -> realm -> token.
/// Returns (token URL with query, token).
fn token_flow(
    o: &Opts,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(String, String), String> {
    let (origin, _) = parse_url(&o.base)?;
    let mut c =
        Conn::open(&origin, tls, timeout).map_err(|e| format!("connect {}: {e}", o.base))?;
    let path = format!("/v2/{}/manifests/{}", o.repo, o.reference);
    let req = request_bytes("GET", &origin, &path, &[("Accept", MANIFEST_ACCEPT)]);
    let r = exchange(&mut c, &req, false, Body::Keep).map_err(|e| format!("challenge: {e}"))?;
    if r.status != 401 {
        return Err(format!(
            "expected 401 from {}{path}, got {}",
            o.base, r.status
        ));
    }
    let ch = r.www_authenticate.ok_or("401 without WWW-Authenticate")?;
    let p = challenge_params(&ch);
    let realm = p.get("realm").ok_or(format!("no realm in {ch}"))?;
    if let Some(want) = &o.expect_realm {
        if !realm.starts_with(want.as_str()) {
            return Err(format!(
                "realm {realm} does not point at {want} (challenge: {ch})"
            ));
        }
    }
    let mut url = realm.clone();
    url.push(if url.contains('?') { '&' } else { '?' });
    if let Some(svc) = p.get("service") {
        url.push_str("service=");
        url.push_str(&query_escape(svc));
        url.push('&');
    }
    let scope = p
        .get("scope")
        .cloned()
        .unwrap_or_else(|| format!("repository:{}:pull", o.repo));
    url.push_str("scope=");
    url.push_str(&query_escape(&scope));
    let (torigin, tpath) = parse_url(&url)?;
    let mut tc = if torigin == origin && !r.close {
        c
    } else {
        Conn::open(&torigin, tls, timeout).map_err(|e| format!("connect {url}: {e}"))?
    };
    let req = request_bytes("GET", &torigin, &tpath, &[]);
    let r = exchange(&mut tc, &req, false, Body::Keep).map_err(|e| format!("token: {e}"))?;
    if r.status != 200 {
        return Err(format!("token GET {url}: status {}", r.status));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("token JSON: {e}"))?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(Value::as_str)
        .ok_or("no token in the token response")?;
    Ok((url, token.to_string()))
}

const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------- /proc

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (utime + stime) in ticks and the parent pid, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ") ": state(0) ppid(1) ... utime(11) stime(12)
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ut + st, ppid))
}

/// `roots` and all their descendants.
fn tree(roots: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = roots.to_vec();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((_, ppid)) = proc_stat(pid) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut i = 0;
    while i < all.len() {
        if let Some(kids) = children.get(&all[i]) {
            for k in kids {
                if !all.contains(k) {
                    all.push(*k);
                }
            }
        }
        i += 1;
    }
    all
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| proc_stat(*p)).map(|s| s.0).sum()
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn reset_hwm(pids: &[u32]) {
    for p in pids {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// Jiffies of all CPUs from /proc/stat: (user+nice+system, softirq+irq, steal, total).
fn system_jiffies() -> (u64, u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (g(0) + g(1) + g(2), g(5) + g(6), g(7), total)
}

fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---------------------------------------------------------------- the run

#[derive(Default)]
struct Stats {
    ok: u64,
    bytes: u64,
    lat_us: Vec<u32>,
    status: HashMap<u16, u64>,
    io_errors: u64,
    mismatches: u64,
    redirects: u64,
    first_error: Option<String>,
}

impl Stats {
    fn error(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

struct Plan {
    workload: Workload,
    origin: Origin,
    /// The first request of each iteration.
    req: Vec<u8>,
    path: String,
    digest: Option<String>,
    size: Option<u64>,
}

fn one(
    plan: &Plan,
    conns: &mut HashMap<Origin, Conn>,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    st: &mut Stats,
) -> Result<(), String> {
    let head_only = plan.workload == Workload::ManifestHead;
    let body = match plan.workload {
        Workload::Blob | Workload::ManifestGet | Workload::Cold => Body::Hash,
        _ => Body::Count,
    };
    let mut origin = plan.origin.clone();
    let mut path = plan.path.clone();
    let mut req = plan.req.clone();
    for hop in 0..=10 {
        let mut c = match conns.remove(&origin) {
            Some(c) => c,
            None => Conn::open(&origin, tls, timeout).map_err(|e| {
                st.io_errors += 1;
                format!("connect {}: {e}", origin.to_url())
            })?,
        };
        let r = match exchange(&mut c, &req, head_only, body) {
            Ok(r) => r,
            Err(e) => {
                st.io_errors += 1;
                return Err(format!("{}{path}: {e}", origin.to_url()));
            }
        };
        *st.status.entry(r.status).or_default() += 1;
        if !r.close && plan.workload != Workload::Cold {
            conns.insert(origin.clone(), c);
        }
        if matches!(r.status, 301 | 302 | 303 | 307 | 308) && plan.workload == Workload::Blob {
            let loc = r.location.ok_or("redirect without Location")?;
            let (o, p) = resolve_location(&origin, &path, &loc)?;
            st.redirects += 1;
            // Clients drop Authorization when they follow the blob redirect to the CDN.
            req = request_bytes("GET", &o, &p, &[]);
            origin = o;
            path = p;
            if hop == 10 {
                return Err("too many redirects".into());
            }
            continue;
        }
        if r.status != 200 {
            return Err(format!("{}{path}: status {}", origin.to_url(), r.status));
        }
        if let Some(want) = plan.size {
            if r.body_len != want {
                st.mismatches += 1;
                return Err(format!("body of {} bytes, expected {want}", r.body_len));
            }
        }
        if let (Some(want), Some(got)) = (&plan.digest, &r.body_sha256) {
            if want != got {
                st.mismatches += 1;
                return Err(format!("sha256 mismatch: {got} != {want}"));
            }
        }
        if head_only {
            if let (Some(want), Some(got)) = (&plan.digest, &r.content_digest) {
                if want != got {
                    st.mismatches += 1;
                    return Err(format!("HEAD digest {got} != {want}"));
                }
            }
        }
        st.bytes += r.body_len;
        return Ok(());
    }
    Err("too many redirects".into())
}

fn client_config(cas: &[String]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for f in cas {
        let pem = std::fs::read(f).unwrap_or_else(|e| die(&format!("{f}: {e}")));
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.unwrap_or_else(|e| die(&format!("{f}: {e}")));
            roots.add(c).unwrap_or_else(|e| die(&format!("{f}: {e}")));
        }
    }
    let mut provider = rustls::crypto::ring::default_provider();
    // Offer AES-128-GCM first, as Go's TLS client (docker, containerd) does on AES hardware.
    provider.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
            _ => 4,
        }
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every new connection is a full handshake (the `cold` workload measures exactly that).
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let o = parse_opts();
    let timeout = Duration::from_secs_f64(o.timeout);
    // Watchdog: whatever happens, this process ends.
    let hard = Duration::from_secs_f64(o.duration + o.timeout + 10.0);
    std::thread::spawn(move || {
        std::thread::sleep(hard);
        eprintln!("loadgen: watchdog: still running after {hard:?}, exiting");
        exit(3)
    });
    let tls = client_config(&o.cas);
    let (origin, _) = parse_url(&o.base).unwrap_or_else(|e| die(&e));

    // ---- setup (not measured): the token flow through the target
    let (token_url, token) = if o.anonymous {
        if o.workload == Workload::Token {
            die("--anonymous has no token to fetch");
        }
        (String::new(), String::new())
    } else {
        token_flow(&o, &tls, timeout).unwrap_or_else(|e| {
            println!(
                "{}",
                json!({"error": format!("token flow: {e}"), "labels": labels(&o)})
            );
            exit(1)
        })
    };
    let auth = format!("Bearer {token}");
    let auth_header: &[(&str, &str)] = if o.anonymous {
        &[]
    } else {
        &[("Authorization", auth.as_str())]
    };
    let plan = match o.workload {
        Workload::Token => {
            let (to, tp) = parse_url(&token_url).unwrap_or_else(|e| die(&e));
            Plan {
                workload: o.workload,
                req: request_bytes("GET", &to, &tp, &[]),
                origin: to,
                path: tp,
                digest: None,
                size: None,
            }
        }
        Workload::ManifestGet | Workload::ManifestHead | Workload::Cold => {
            let path = format!("/v2/{}/manifests/{}", o.repo, o.reference);
            let method = if o.workload == Workload::ManifestHead {
                "HEAD"
            } else {
                "GET"
            };
            let mut h = vec![("Accept", MANIFEST_ACCEPT)];
            h.extend_from_slice(auth_header);
            if o.workload == Workload::Cold {
                h.push(("Connection", "close"));
            }
            Plan {
                workload: o.workload,
                req: request_bytes(method, &origin, &path, &h),
                origin: origin.clone(),
                path,
                digest: o.digest.clone(),
                size: o.size,
            }
        }
        Workload::Blob => {
            let digest = o.digest.clone().expect("checked");
            let path = format!("/v2/{}/blobs/{digest}", o.repo);
            Plan {
                workload: o.workload,
                req: request_bytes("GET", &origin, &path, auth_header),
                origin: origin.clone(),
                path,
                digest: Some(digest),
                size: o.size,
            }
        }
    };
    let plan = Arc::new(plan);

    // ---- threads, connections opened before the clock starts (keep-alive workloads)
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(o.conns + 1));
    let deadline_ns = (o.duration * 1e9) as u64;
    let max = o.max_requests;
    let mut handles = Vec::new();
    for _ in 0..o.conns {
        let (plan, tls, started, stop, barrier) = (
            plan.clone(),
            tls.clone(),
            started.clone(),
            stop.clone(),
            barrier.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut st = Stats::default();
            let mut conns: HashMap<Origin, Conn> = HashMap::new();
            if plan.workload != Workload::Cold {
                match Conn::open(&plan.origin, &tls, timeout) {
                    Ok(c) => {
                        conns.insert(plan.origin.clone(), c);
                    }
                    Err(e) => st.error(format!("pre-connect: {e}")),
                }
            }
            barrier.wait();
            let t0 = Instant::now();
            loop {
                if stop.load(Ordering::Relaxed) || t0.elapsed().as_nanos() as u64 >= deadline_ns {
                    break;
                }
                if started.fetch_add(1, Ordering::Relaxed) >= max {
                    break;
                }
                let t = Instant::now();
                match one(&plan, &mut conns, &tls, timeout, &mut st) {
                    Ok(()) => {
                        st.ok += 1;
                        st.lat_us
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(e) => {
                        conns.clear();
                        st.error(e);
                        // A target that fails fast must not turn this into a busy loop.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            st
        }));
    }

    let pids = tree(&o.proxy_pids);
    let rss_before_kb: u64 = pids.iter().map(|p| status_kb(*p, "VmRSS:")).sum();
    reset_hwm(&pids);
    let tck = clk_tck();
    let cpu0 = cpu_ticks(&pids);
    let up0 = o.upstream_pid.map(|p| cpu_ticks(&tree(&[p])));
    let self0 = self_cpu_secs();
    let sys0 = system_jiffies();
    let counts0 = o.upstream_counts.as_deref().map(|p| upstream_counts(p, "on"));
    barrier.wait();
    let t0 = Instant::now();
    let mut total = Stats::default();
    for h in handles {
        let st = h.join().unwrap_or_default();
        total.ok += st.ok;
        total.bytes += st.bytes;
        total.lat_us.extend(st.lat_us);
        for (k, v) in st.status {
            *total.status.entry(k).or_default() += v;
        }
        total.io_errors += st.io_errors;
        total.mismatches += st.mismatches;
        total.redirects += st.redirects;
        if total.first_error.is_none() {
            total.first_error = st.first_error;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let pids_after = tree(&o.proxy_pids);
    let cpu1 = cpu_ticks(&pids_after);
    let up1 = o.upstream_pid.map(|p| cpu_ticks(&tree(&[p])));
    let self1 = self_cpu_secs();
    let sys1 = system_jiffies();
    let hwm_kb: u64 = pids_after.iter().map(|p| status_kb(*p, "VmHWM:")).sum();
    let counts1 = o.upstream_counts.as_deref().map(|path| {
        // Work a proxy does after its last response (a store finishing, a second fetch)
        // still counts: the double records a request when it arrives.
        std::thread::sleep(Duration::from_secs_f64(o.settle));
        upstream_counts(path, "off")
    });
    let rss_kb: u64 = pids_after.iter().map(|p| status_kb(*p, "VmRSS:")).sum();

    total.lat_us.sort_unstable();
    let errors: u64 = total.io_errors
        + total.mismatches
        + total
            .status
            .iter()
            .filter(|(s, _)| !matches!(**s, 200 | 301 | 302 | 303 | 307 | 308))
            .map(|(_, n)| *n)
            .sum::<u64>();
    let five_xx: u64 = total
        .status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| *n)
        .sum();
    let mut status = Map::new();
    for (k, v) in &total.status {
        status.insert(k.to_string(), json!(v));
    }
    let mut out = json!({
        "labels": labels(&o),
        "workload": format!("{:?}", o.workload),
        "base": o.base,
        "conns": o.conns,
        "requests": total.ok,
        "errors": errors,
        "five_xx": five_xx,
        "io_errors": total.io_errors,
        "mismatches": total.mismatches,
        "redirects": total.redirects,
        "status": status,
        "bytes": total.bytes,
        "secs": secs,
        "rps": total.ok as f64 / secs,
        "mbps": total.bytes as f64 / secs / 1e6,
        "p50_ms": percentile(&total.lat_us, 0.50),
        "p99_ms": percentile(&total.lat_us, 0.99),
        "client_cpu_s": self1 - self0,
        // Share of all CPUs busy during the run (everything on the machine).
        "system_busy": ((sys1.0 + sys1.1 + sys1.2) - (sys0.0 + sys0.1 + sys0.2)) as f64
            / (sys1.3 - sys0.3).max(1) as f64,
        // Network softirq work is charged to no process: reported on its own.
        "softirq_s": (sys1.1 - sys0.1) as f64 / tck,
        "steal_s": (sys1.2 - sys0.2) as f64 / tck,
        "first_error": total.first_error,
    });
    if !o.proxy_pids.is_empty() {
        out["proxy_pids"] = json!(pids_after);
        out["proxy_cpu_s"] = json!(cpu1.saturating_sub(cpu0) as f64 / tck);
        out["proxy_hwm_kb"] = json!(hwm_kb);
        out["proxy_rss_kb"] = json!(rss_kb);
        out["proxy_rss_before_kb"] = json!(rss_before_kb);
    }
    if let (Some(a), Some(b)) = (&counts0, &counts1) {
        let mut d = Map::new();
        for (k, v) in b {
            let before = a.get(k).copied().unwrap_or(0);
            if k != "seq" && k != "lost" && *v > before {
                d.insert(k.clone(), json!(v - before));
            }
        }
        out["upstream"] = Value::Object(d);
        out["upstream_lost"] = json!(b.get("lost").copied().unwrap_or(0));
    }
    let mut accounted = self1 - self0 + cpu1.saturating_sub(cpu0) as f64 / tck;
    if let (Some(a), Some(b)) = (up0, up1) {
        out["upstream_cpu_s"] = json!(b.saturating_sub(a) as f64 / tck);
        accounted += b.saturating_sub(a) as f64 / tck;
    }
    // Process CPU time (user+system, softirq excluded) used on the machine by anything else
    // than proxy, double and load generator during the run (other jobs disturb the numbers;
    // the report flags it).
    out["other_cpu_s"] = json!(((sys1.0 - sys0.0) as f64 / tck - accounted).max(0.0));
    println!("{out}");
}

/// The double's cumulative request counts (`benchdouble --counts`), after `cmd` (`on`: start
/// recording, `off`: stop).
fn upstream_counts(path: &str, cmd: &str) -> HashMap<String, u64> {
    let read = || -> io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(s, "{cmd}")?;
        let mut line = String::new();
        s.read_to_string(&mut line)?;
        Ok(line)
    };
    let line = read().unwrap_or_else(|e| die(&format!("upstream counts from {path}: {e}")));
    let v: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| die(&format!("upstream counts from {path}: {e}")));
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

fn labels(o: &Opts) -> Value {
    let mut m = Map::new();
    for (k, v) in &o.labels {
        m.insert(k.clone(), json!(v));
    }
    Value::Object(m)
}
