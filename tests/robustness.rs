//! Robustness of ocirelay against misbehaving clients and upstreams: cut and
//! stalled connections, malformed and oversized requests, writes, pipelining,
//! keep-alive, timeouts, digest verification and memory use.
//!
//! Every test starts its own Docker Hub double and its own ocirelay process
//! (see `common/mod.rs`), talks to it over loopback only, and bounds every
//! wait with a timeout.

mod common;

use common::{
    anonymous_token, basic_auth, registry_block, sha256, start_with_tls, Client, Host, HubDouble,
    Options, Relay,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn hub() -> HubDouble {
    HubDouble::start(Options::default()).expect("start hub double")
}

/// `GET target` with `Authorization: Bearer tok` through `c`.
fn get_auth(c: &mut Client, target: &str, tok: &str) -> common::Response {
    let auth = format!("Bearer {tok}");
    c.get_with(target, &[("Authorization", &auth)])
        .unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// The `errors[0].code` of an OCI JSON error body.
fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not a JSON error body ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {v}"))
        .to_string()
}

/// The `errors[0].message` of an OCI JSON error body.
fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    v["errors"][0]["message"]
        .as_str()
        .expect("errors[0].message")
        .to_string()
}

/// Polls `f` every 20 ms until it holds or `limit` passes; returns whether it held.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How reading a connection to its end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Orderly close (FIN).
    Eof,
    /// Reset or another error: also a close, an abortive one.
    Reset,
    /// Still open when the wait ran out.
    Open,
}

/// A parsed response read from a raw connection.
#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection to the relay, for byte-exact requests and for
/// watching how (and when) the relay ends a connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to relay");
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response head (1xx included) and returns it with its length
    /// removed from the buffer.
    fn read_head(&mut self) -> io::Result<Resp> {
        loop {
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut storage);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let resp = Resp {
                        status: r.code.unwrap_or(0),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    self.buf.drain(..n);
                    return Ok(resp);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "malformed response head ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                        ),
                    ))
                }
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed inside a response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
            }
        }
    }

    fn take_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body cut after {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one complete final response (interim 1xx skipped). `head`: it
    /// answers a HEAD request, so it has no body.
    fn read_response(&mut self, head: bool) -> io::Result<Resp> {
        let mut resp = loop {
            let r = self.read_head()?;
            if !(100..200).contains(&r.status) {
                break r;
            }
        };
        if head || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.take_line()?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
                })?;
                if size == 0 {
                    while !self.take_line()?.is_empty() {}
                    break;
                }
                let piece = self.take_exact(size)?;
                resp.body.extend_from_slice(&piece);
                if !self.take_line()?.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk CRLF"));
                }
            }
        } else if let Some(n) = resp.content_length() {
            resp.body = self.take_exact(n as usize)?;
        } else {
            let (rest, _) = self.read_to_end(Duration::from_secs(10));
            resp.body = rest;
        }
        Ok(resp)
    }

    /// Reads the body of `head` (already read) by its framing.
    fn read_response_body_after(&mut self, head: Resp) -> io::Result<Resp> {
        // Put the head back in front and parse again: simplest with the
        // framing logic in one place.
        let mut again = format!("HTTP/1.1 {} X\r\n", head.status).into_bytes();
        for (k, v) in &head.headers {
            again.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        again.extend_from_slice(b"\r\n");
        again.extend_from_slice(&self.buf);
        self.buf = again;
        self.read_response(false)
    }

    /// Reads (buffered bytes first) until the peer closes or `wait` passes.
    fn read_to_end(&mut self, wait: Duration) -> (Vec<u8>, End) {
        let mut out = std::mem::take(&mut self.buf);
        let deadline = Instant::now() + wait;
        let mut tmp = vec![0u8; 256 * 1024];
        let end = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break End::Open;
            }
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.s.read(&mut tmp) {
                Ok(0) => break End::Eof,
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break End::Open
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break End::Reset,
            }
        };
        let _ = self.s.set_read_timeout(Some(Duration::from_secs(10)));
        (out, end)
    }
}

/// Parses `bytes` as one response with a Content-Length (no further reads).
fn parse_one(bytes: &[u8]) -> Resp {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut storage);
    let n = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "no complete response head ({other:?}) in {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ),
    };
    Resp {
        status: r.code.unwrap_or(0),
        headers: r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: bytes[n..].to_vec(),
    }
}

/// Asserts that `raw` (everything the relay sent on a connection that then
/// ended) is one complete OCI JSON error response with `status`, and that the
/// relay closed the connection.
fn assert_error_then_close(raw: &[u8], end: End, status: u16) -> Resp {
    assert_ne!(
        end,
        End::Open,
        "the relay must close the connection after a {status}; got so far: {:?}",
        String::from_utf8_lossy(raw)
    );
    let r = parse_one(raw);
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
    assert_eq!(
        r.content_length(),
        Some(r.body.len() as u64),
        "exactly one complete response, nothing after it: {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.closes(),
        "a closing error response says Connection: close"
    );
    error_code(&r.body);
    r
}

/// A request head for the relay, with `Host` and the extra header lines.
fn request(method: &str, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: mirror.test\r\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The PID of `relay`, found through its unique config path in /proc.
fn relay_pid(relay: &Relay) -> u32 {
    let needle = relay.dir.path().join("ocirelay.toml");
    let needle = needle.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            return pid;
        }
    }
    panic!("no process runs with config {needle}");
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("kB value");
    kb * 1024
}

/// A config like the harness's, with client timeouts of one second.
fn short_client_timeouts_config(hub: &HubDouble) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\n\n[timeouts]\nconnect_secs = 2\nupstream_read_secs = 2\nclient_header_secs = 1\nclient_idle_secs = 1\nclient_write_secs = 5\n\n{}",
        registry_block(hub, "docker.io")
    )
}

// ---------------------------------------------------------------------------
// a scriptable plain-HTTP upstream, for what the double will not do
// ---------------------------------------------------------------------------

/// What [`FakeUpstream`] does with a connection after a canned answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Wait for the next request.
    KeepAlive,
    /// Close it (close-delimited bodies, cuts).
    Close,
    /// Keep it open and send nothing more (a stall mid-body).
    Hold,
    /// Send the first this many bytes, pause, then the rest (a head and
    /// its body in separate writes), then wait for the next request.
    SplitAt(usize),
}

/// A canned answer of [`FakeUpstream`]: raw response bytes for a path.
#[derive(Clone)]
struct Canned {
    path: String,
    bytes: Vec<u8>,
    after: After,
}

/// A minimal plain-HTTP registry on 127.0.0.1 that answers each request path
/// with fixed bytes, e.g. a body that does not match the digest it is served
/// under (the double stores content by its real digest, so it cannot).
struct FakeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    /// Held connections the relay closed.
    released: Arc<AtomicUsize>,
}

impl FakeUpstream {
    fn start(routes: Vec<Canned>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let (st, rq, rl) = (stop.clone(), requests.clone(), released.clone());
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (routes, rq, rl) = (routes.clone(), rq.clone(), rl.clone());
                std::thread::spawn(move || FakeUpstream::serve(conn, &routes, &rq, &rl));
            }
        });
        FakeUpstream {
            addr,
            stop,
            requests,
            released,
        }
    }

    fn serve(
        mut conn: TcpStream,
        routes: &[Canned],
        requests: &AtomicUsize,
        released: &AtomicUsize,
    ) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match conn.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            requests.fetch_add(1, Ordering::SeqCst);
            let mut parts = head.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let found = routes.iter().find(|r| r.path == path);
            let (bytes, after) = match found {
                Some(r) if method == "HEAD" => {
                    // Head only: everything up to the blank line.
                    let i = r.bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    (r.bytes[..i].to_vec(), r.after)
                }
                Some(r) => (r.bytes.clone(), r.after),
                None => (
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 77\r\n\r\n{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"unknown\",\"detail\":null}]}     "
                        .to_vec(),
                    After::KeepAlive,
                ),
            };
            let at = match after {
                After::SplitAt(at) => at.min(bytes.len()),
                _ => bytes.len(),
            };
            if conn.write_all(&bytes[..at]).is_err() {
                return;
            }
            if at < bytes.len() {
                std::thread::sleep(Duration::from_millis(100));
                if conn.write_all(&bytes[at..]).is_err() {
                    return;
                }
            }
            match after {
                After::KeepAlive | After::SplitAt(_) => {}
                After::Close => {
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
                After::Hold => {
                    // Until the relay gives up on it (or 15 s).
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
                    match conn.read(&mut tmp) {
                        Ok(0) => {
                            released.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                            released.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    return;
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads the rest of a response the relay must cut because its upstream
/// stalled: the connection ends once `upstream_read_secs` (2 s in these
/// configs) has run out since `since`, not before and not much later.
fn read_until_cut(raw: &mut Raw, since: Instant) -> Vec<u8> {
    let (body, end) = raw.read_to_end(Duration::from_secs(10));
    let took = since.elapsed();
    assert_ne!(end, End::Open, "client left hanging on a stalled upstream");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "cut after {took:?} with upstream_read_secs = 2"
    );
    body
}

/// A relay config whose only registry is `upstream` (plain HTTP, so `debug`).
fn config_with_upstream(upstream: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 2\ndebug = true\n\n[timeouts]\nconnect_secs = 2\nupstream_read_secs = 2\nclient_header_secs = 2\nclient_idle_secs = 5\nclient_write_secs = 5\n\n[[registry]]\nname = \"docker.io\"\nupstream = \"{upstream}\"\n"
    )
}

fn length_response(content_type: &str, digest: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked_response(digest: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        r.extend_from_slice(piece);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn close_delimited_response(digest: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

// ---------------------------------------------------------------------------
// 1. client disconnect mid-blob
// ---------------------------------------------------------------------------

#[test]
fn client_disconnect_mid_blob_closes_the_upstream_connection() {
    let hub = hub();
    let mut relay = Relay::start(&hub);
    let digest = hub.add_random_blob("library/alpine", 64 << 20, 0x5eed_0001);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    assert_eq!(hub.active_connections(Host::Cdn), 0);

    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &format!("Bearer {tok}"))],
    ));
    let head = raw.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(64 << 20));
    while raw.buf.len() < 1 << 20 {
        assert!(raw.fill().expect("blob bytes") > 0, "blob ended early");
    }
    assert_eq!(
        hub.active_connections(Host::Cdn),
        1,
        "the blob streams from one CDN connection"
    );
    // Leave with most of the blob unread (the kernel answers with a reset).
    drop(raw);
    let t = Instant::now();

    // Well before client_write_secs (5 s): the relay noticed the client is
    // gone, not merely that it stopped reading.
    assert!(
        wait_until(Duration::from_secs(3), || hub.active_connections(Host::Cdn)
            == 0),
        "the relay kept its CDN connection open after the client left"
    );
    eprintln!(
        "CDN connection closed {:?} after the client left",
        t.elapsed()
    );
    assert!(relay.alive(), "relay died: {}", relay.stderr());

    let r = get_auth(&mut c, &format!("/v2/library/alpine/blobs/{digest}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 64 << 20);
    assert_eq!(sha256(&r.body), digest);
    assert!(relay.alive());
}

// ---------------------------------------------------------------------------
// 2. oversized and malformed request heads
// ---------------------------------------------------------------------------

#[test]
fn oversized_request_head_is_431_json_and_closed() {
    let hub = hub();
    let relay = Relay::start(&hub);

    // One huge header line (default max_header_bytes is 16384), sent whole.
    let mut raw = Raw::connect(relay.http);
    let big = "a".repeat(20_000);
    raw.send(&request("GET", "/v2/", &[("X-Big", &big)]));
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    let r = assert_error_then_close(&bytes, end, 431);
    assert_eq!(error_code(&r.body), "UNKNOWN");

    // A head that never ends: the relay must not wait for the blank line.
    let mut raw = Raw::connect(relay.http);
    let mut endless = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n".to_vec();
    for i in 0..2000 {
        endless.extend_from_slice(format!("X-Filler-{i}: yyyyyyyy\r\n").as_bytes());
    }
    let _ = raw.s.write_all(&endless[..16 * 1024]);
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 431);

    // Too many header lines, though few bytes.
    let mut raw = Raw::connect(relay.http);
    let mut many = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    raw.send(&many);
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 431);

    assert!(
        hub.log().for_host(Host::Registry).is_empty(),
        "nothing goes upstream"
    );
}

#[test]
fn malformed_request_head_is_400_and_closed() {
    let hub = hub();
    let mut relay = Relay::start(&hub);
    let cases: [&[u8]; 4] = [
        b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n",
        b"GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    ];
    for case in cases {
        let mut raw = Raw::connect(relay.http);
        raw.send(case);
        let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
        assert!(
            !bytes.is_empty(),
            "no answer to {:?}",
            String::from_utf8_lossy(case)
        );
        assert_error_then_close(&bytes, end, 400);
    }
    assert!(relay.alive());
    assert!(hub.log().is_empty(), "nothing goes upstream");
}

#[test]
fn ambiguous_body_framing_is_400_and_closed() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let cases: [&[u8]; 5] = [
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        let mut raw = Raw::connect(relay.http);
        raw.send(case);
        let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
        assert_error_then_close(&bytes, end, 400);
    }
    // Also a GET carrying both (smuggling attempt) on a kept-alive connection:
    // the request behind it must not be answered.
    let mut raw = Raw::connect(relay.http);
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = raw.read_response(false).unwrap();
    assert_eq!(first.status, 200);
    let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
    assert_error_then_close(&bytes, end, 400);
    assert!(hub.log().is_empty(), "nothing goes upstream");
}

// ---------------------------------------------------------------------------
// 3. invalid names, tags, digests
// ---------------------------------------------------------------------------

#[test]
fn invalid_name_tag_or_digest_is_400_and_never_sent_upstream() {
    let hub = hub();
    let relay = Relay::start(&hub);
    hub.log().clear();
    let long_tag = "t".repeat(129);
    let zeros = "0".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        ("/v2/Library/Alpine/manifests/latest".into(), "NAME_INVALID"),
        ("/v2/library/../etc/manifests/latest".into(), "NAME_INVALID"),
        (
            "/v2/library//alpine/manifests/latest".into(),
            "NAME_INVALID",
        ),
        ("/v2/-alpine/tags/list".into(), "NAME_INVALID"),
        (
            "/v2/library%2falpine/manifests/latest".into(),
            "NAME_INVALID",
        ),
        (
            format!("/v2/{}/manifests/latest", "a".repeat(300)),
            "NAME_INVALID",
        ),
        ("/v2/library/alpine/manifests/-latest".into(), "TAG_INVALID"),
        ("/v2/library/alpine/manifests/.hidden".into(), "TAG_INVALID"),
        (
            format!("/v2/library/alpine/manifests/{long_tag}"),
            "TAG_INVALID",
        ),
        (
            "/v2/library/alpine/manifests/la%20test".into(),
            "TAG_INVALID",
        ),
        ("/v2/library/alpine/blobs/latest".into(), "DIGEST_INVALID"),
        (
            "/v2/library/alpine/blobs/sha256:xyz".into(),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/blobs/sha256:{}", "A".repeat(64)),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/blobs/sha256:{}", &zeros[..63]),
            "DIGEST_INVALID",
        ),
        (
            "/v2/library/alpine/manifests/sha256:abc".into(),
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/library/alpine/referrers/SHA256:{zeros}"),
            "DIGEST_INVALID",
        ),
    ];
    let mut c = relay.client();
    for (target, code) in &cases {
        for method in ["GET", "HEAD"] {
            let r = c
                .request(method, target, &[], None)
                .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
            assert_eq!(r.status, 400, "{method} {target}: {}", r.text());
            if method == "GET" {
                assert_eq!(error_code(&r.body), *code, "{target}: {}", r.text());
                assert_eq!(r.header("content-type"), Some("application/json"));
            } else {
                assert!(r.body.is_empty());
                assert!(r.content_length().is_some_and(|n| n > 0));
            }
        }
    }
    assert_eq!(
        c.connections_opened(),
        1,
        "a 400 for a bad name keeps the connection"
    );
    let logged: Vec<String> = hub
        .log()
        .entries()
        .iter()
        .map(|e| format!("{} {} {}", e.host.label(), e.method, e.target))
        .collect();
    assert!(
        logged.is_empty(),
        "invalid requests reached the upstream: {logged:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. writes
// ---------------------------------------------------------------------------

#[test]
fn writes_are_refused_with_405_unsupported() {
    let hub = hub();
    let relay = Relay::start(&hub);
    hub.log().clear();
    let d = &hub.seeded().alpine.layers[0].digest;
    let manifest = hub.seeded().alpine.manifest_bytes.clone();
    let cases: Vec<(&str, String, Option<&[u8]>)> = vec![
        (
            "PUT",
            "/v2/library/alpine/manifests/latest".into(),
            Some(&manifest[..]),
        ),
        ("POST", "/v2/library/alpine/blobs/uploads/".into(), None),
        (
            "POST",
            format!("/v2/library/alpine/blobs/uploads/?mount={d}&from=library/x"),
            Some(b""),
        ),
        (
            "PATCH",
            "/v2/library/alpine/blobs/uploads/abc".into(),
            Some(b"data"),
        ),
        (
            "PUT",
            format!("/v2/library/alpine/blobs/uploads/abc?digest={d}"),
            Some(b"data"),
        ),
        ("DELETE", format!("/v2/library/alpine/blobs/{d}"), None),
        ("DELETE", "/v2/library/alpine/manifests/latest".into(), None),
        ("GET", "/v2/library/alpine/blobs/uploads/abc".into(), None),
    ];
    for (method, target, body) in &cases {
        let mut c = relay.client();
        let headers: &[(&str, &str)] = if body.is_some() {
            &[(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v2+json",
            )]
        } else {
            &[]
        };
        let r = c
            .request(method, target, headers, *body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert_eq!(r.status, 405, "{method} {target}: {}", r.text());
        assert_eq!(error_code(&r.body), "UNSUPPORTED", "{method} {target}");
        let msg = error_message(&r.body);
        assert!(
            msg.contains("read-only mirror"),
            "{method} {target}: message {msg:?}"
        );
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert!(hub.log().is_empty(), "a write reached the upstream");
}

// ---------------------------------------------------------------------------
// 5. upstream down
// ---------------------------------------------------------------------------

#[test]
fn unreachable_upstream_is_502_without_leaking_its_address_and_recovers() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    // Pool a registry connection, so that "down" also kills a pooled one.
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200);

    hub.set_down(Host::Registry, true).unwrap();
    let addr = hub.registry_addr();
    for target in [
        "/v2/library/alpine/manifests/latest",
        "/v2/",
        &format!(
            "/v2/library/alpine/blobs/{}",
            hub.seeded().alpine.layers[0].digest
        ),
    ] {
        let t = Instant::now();
        let r = get_auth(&mut c, target, &tok);
        assert_eq!(r.status, 502, "{target}: {}", r.text());
        assert!(t.elapsed() < Duration::from_secs(4), "{target}");
        assert_eq!(error_code(&r.body), "UNAVAILABLE", "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let everything = format!("{:?} {}", r.headers, r.text());
        for leak in [
            addr.ip().to_string(),
            format!(":{}", addr.port()),
            hub.registry_url(),
        ] {
            assert!(
                !everything.contains(&leak),
                "{target}: the 502 leaks {leak:?}: {everything}"
            );
        }
    }

    assert_eq!(
        c.connections_opened(),
        1,
        "a 502 keeps the client connection alive"
    );

    hub.set_down(Host::Registry, false).unwrap();
    for _ in 0..3 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "after the upstream came back: {}", r.text());
        assert_eq!(
            r.header("docker-content-digest"),
            Some(hub.seeded().alpine.manifest.digest.as_str())
        );
    }
    let layer = &hub.seeded().alpine.layers[0];
    let r = get_auth(
        &mut c,
        &format!("/v2/library/alpine/blobs/{}", layer.digest),
        &tok,
    );
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer.digest);
}

// ---------------------------------------------------------------------------
// 6. stalled upstreams
// ---------------------------------------------------------------------------

#[test]
fn stalled_registry_is_504_within_the_read_timeout() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");

    hub.set_stall(Host::Registry, true);
    let t = Instant::now();
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    let took = t.elapsed();
    hub.set_stall(Host::Registry, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(error_code(&r.body), "UNAVAILABLE");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "504 after {took:?} with upstream_read_secs = 2"
    );
    // And it answers normally afterwards.
    let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
    assert_eq!(r.status, 200);
    assert_eq!(
        c.connections_opened(),
        1,
        "a 504 keeps the client connection"
    );
}

#[test]
fn stalled_cdn_is_504_within_the_read_timeout() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let layer = hub.seeded().alpine.layers[0].clone();
    let target = format!("/v2/library/alpine/blobs/{}", layer.digest);

    hub.set_stall(Host::Cdn, true);
    let t = Instant::now();
    let r = get_auth(&mut c, &target, &tok);
    let took = t.elapsed();
    hub.set_stall(Host::Cdn, false);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(error_code(&r.body), "UNAVAILABLE");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "504 after {took:?}"
    );
    assert!(
        !hub.log().for_host(Host::Cdn).is_empty(),
        "the relay did reach the CDN"
    );
    let cdn = hub.cdn_addr();
    assert!(!r.text().contains(&cdn.ip().to_string()), "{}", r.text());
    let r = get_auth(&mut c, &target, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer.digest);
}

// ---------------------------------------------------------------------------
// 7. blob cut by the CDN
// ---------------------------------------------------------------------------

#[test]
fn blob_cut_by_the_cdn_is_never_completed_and_a_retry_succeeds() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let size = 4 << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0x5eed_0007);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let target = format!("/v2/library/alpine/blobs/{digest}");

    hub.knobs().cut_blobs_after(1 << 20, Some(1));
    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &target,
        &[("Authorization", &format!("Bearer {tok}"))],
    ));
    let head = raw.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(size as u64));
    let (body, end) = raw.read_to_end(Duration::from_secs(8));
    assert_ne!(end, End::Open, "the relay must close a cut transfer");
    assert!(
        body.len() < size,
        "a cut body looked complete ({} bytes)",
        body.len()
    );
    assert!(
        body.len() <= 1 << 20,
        "more bytes than the CDN sent: {}",
        body.len()
    );
    let blob = hub.content().blob(&digest).unwrap();
    assert_eq!(
        &body[..],
        &blob[..body.len()],
        "the bytes that came are right"
    );

    let r = get_auth(&mut c, &target, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert_eq!(sha256(&r.body), digest);
}

// ---------------------------------------------------------------------------
// 8. digest verification
// ---------------------------------------------------------------------------

/// The double serves content under its real digest only (Content computes
/// every digest itself), so a lying upstream is a scripted fake here.
#[test]
fn body_not_matching_its_digest_is_never_completed() {
    let good = hubdouble::random_bytes(1 << 20, 0x5eed_0008).to_vec();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff; // wrong in the very last byte
    let digest = sha256(&good);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let mut bad_manifest = manifest.clone();
    bad_manifest[0] = b' ';
    let mdigest = sha256(&manifest);
    let routes = vec![
        Canned {
            path: "/v2/".into(),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            after: After::KeepAlive,
        },
        Canned {
            path: format!("/v2/library/good/blobs/{digest}"),
            bytes: length_response("application/octet-stream", &digest, &good),
            after: After::KeepAlive,
        },
        Canned {
            path: format!("/v2/library/length/blobs/{digest}"),
            bytes: length_response("application/octet-stream", &digest, &bad),
            after: After::KeepAlive,
        },
        Canned {
            path: format!("/v2/library/chunked/blobs/{digest}"),
            bytes: chunked_response(&digest, &bad, 100_000),
            after: After::KeepAlive,
        },
        Canned {
            path: format!("/v2/library/closed/blobs/{digest}"),
            bytes: close_delimited_response(&digest, &bad),
            after: After::Close,
        },
        Canned {
            path: format!("/v2/library/length/manifests/{mdigest}"),
            bytes: length_response(hubdouble::OCI_MANIFEST, &mdigest, &bad_manifest),
            after: After::KeepAlive,
        },
    ];
    let fake = FakeUpstream::start(routes);
    let mut relay = Relay::start_with(&config_with_upstream(&fake.url()));

    // Control: the right bytes go through.
    let mut c = relay.client();
    let r = c.get(&format!("/v2/library/good/blobs/{digest}")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);

    // A small body named by its digest is checked before the head goes out:
    // a mismatch is a clean 502, never a 200.
    let m = c
        .get(&format!("/v2/library/length/manifests/{mdigest}"))
        .unwrap();
    assert_eq!(m.status, 502);
    assert!(m.text().contains("does not match"), "{}", m.text());

    // A large length-delimited body: fewer bytes than Content-Length, then a close.
    {
        let target = format!("/v2/library/length/blobs/{digest}");
        let mut raw = Raw::connect(relay.http);
        raw.send(&request("GET", &target, &[]));
        let head = raw.read_head().unwrap();
        assert_eq!(head.status, 200, "{target}");
        let len = head.content_length().expect("Content-Length") as usize;
        let (body, end) = raw.read_to_end(Duration::from_secs(8));
        assert_ne!(end, End::Open, "{target}: connection left open");
        assert!(
            body.len() < len,
            "{target}: a body failing its digest was completed ({} of {len} bytes)",
            body.len()
        );
    }

    // Chunked and close-delimited upstream bodies reach an HTTP/1.1 client
    // chunked: the terminating chunk must never come.
    for target in [
        format!("/v2/library/chunked/blobs/{digest}"),
        format!("/v2/library/closed/blobs/{digest}"),
    ] {
        let mut raw = Raw::connect(relay.http);
        raw.send(&request("GET", &target, &[]));
        let head = raw.read_head().unwrap();
        assert_eq!(head.status, 200, "{target}");
        assert!(
            head.content_length().is_none(),
            "{target}: unexpected length"
        );
        match raw.read_response_body_after(head) {
            Ok(r) => panic!(
                "{target}: a body failing its digest was completed ({} bytes)",
                r.body.len()
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ),
                "{target}: {e}"
            ),
        }
    }
    assert!(relay.alive());
    assert!(fake.requests.load(Ordering::SeqCst) >= 5);
}

/// A TLS client fetching from a TLS upstream (bodies sealed straight from the
/// upstream's records, see relay.rs): a body failing its digest in its last
/// byte, or cut by the CDN, never arrives complete; the bytes that do arrive
/// are the right ones, and the next pull of the same blob works.
#[test]
fn tls_to_tls_blob_failing_its_digest_or_cut_is_never_completed() {
    let hub = hub();
    let (relay, ca_pem) = start_with_tls(&hub, "");
    let size = 3 << 20;
    let digest = hub.add_random_blob("library/alpine", size, 0x5eed_0030);
    let blob = hub.content().blob(&digest).unwrap();
    let mut c = relay.tls_client(&ca_pem);
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let auth = format!("Bearer {tok}");
    let target = format!("/v2/library/alpine/blobs/{digest}");

    for fault in ["corrupt last byte", "cut after 1 MiB"] {
        if fault.starts_with("corrupt") {
            hub.knobs().corrupt_blobs(1);
        } else {
            hub.knobs().cut_blobs_after(1 << 20, Some(1));
        }
        let mut t = relay.tls_client(&ca_pem);
        t.send_request("GET", &target, &[("Authorization", &auth)], None)
            .unwrap();
        let raw = t.read_raw(Duration::from_secs(8)).unwrap();
        assert!(
            !t.is_connected(),
            "{fault}: the relay must close the connection"
        );
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{fault}: no response head"))
            + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{fault}: {head}");
        assert!(
            head.contains(&format!("content-length: {size}\r\n")),
            "{fault}: {head}"
        );
        let body = &raw[end..];
        assert!(
            body.len() < size,
            "{fault}: a failed body was completed ({} bytes)",
            body.len()
        );
        assert_eq!(body, &blob[..body.len()], "{fault}: wrong bytes arrived");
    }

    let r = c.get_with(&target, &[("Authorization", &auth)]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), digest);
}

/// An HTTP/1.0 client gets an upstream body that has no length (close-delimited,
/// or chunked and decoded for it) as a body that ends when the connection does:
/// an orderly close (FIN) then means "complete", whatever was withheld. A body
/// failing its digest must end with an abortive close (reset) instead.
#[test]

fn body_failing_its_digest_is_not_completed_for_an_http10_client() {
    let good = hubdouble::random_bytes(1 << 20, 0x5eed_0009).to_vec();
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    let digest = sha256(&good);
    let fake = FakeUpstream::start(vec![
        Canned {
            path: format!("/v2/library/closed/blobs/{digest}"),
            bytes: close_delimited_response(&digest, &bad),
            after: After::Close,
        },
        Canned {
            path: format!("/v2/library/chunked/blobs/{digest}"),
            bytes: chunked_response(&digest, &bad, 100_000),
            after: After::KeepAlive,
        },
    ]);
    let relay = Relay::start_with(&config_with_upstream(&fake.url()));
    for repo in ["closed", "chunked"] {
        let mut raw = Raw::connect(relay.http);
        raw.send(format!("GET /v2/library/{repo}/blobs/{digest} HTTP/1.0\r\n\r\n").as_bytes());
        let head = raw.read_head().unwrap();
        assert_eq!(head.status, 200, "{repo}");
        assert!(head.content_length().is_none(), "{repo}");
        assert!(head.header("transfer-encoding").is_none(), "{repo}");
        let (body, end) = raw.read_to_end(Duration::from_secs(8));
        assert_eq!(
            end,
            End::Reset,
            "{repo}: an HTTP/1.0 client got {} of {} bytes of a body failing its digest, then an orderly close: it looks complete",
            body.len(),
            bad.len()
        );
    }
}

// ---------------------------------------------------------------------------
// 9. pipelining
// ---------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let auth = format!("Bearer {tok}");
    let alpine = &hub.seeded().alpine;

    let mut pipeline = request("GET", "/healthz", &[]);
    pipeline.extend(request(
        "GET",
        "/v2/library/alpine/manifests/latest",
        &[("Authorization", &auth)],
    ));
    pipeline.extend(request(
        "HEAD",
        &format!("/v2/library/alpine/blobs/{}", alpine.config.digest),
        &[("Authorization", &auth)],
    ));
    pipeline.extend(request("GET", "/v2/", &[("Connection", "close")]));
    // After the close: must never be answered.
    pipeline.extend(request("GET", "/healthz", &[]));

    let mut raw = Raw::connect(relay.http);
    raw.send(&pipeline);
    let r1 = raw.read_response(false).unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, "ok\n"));
    let r2 = raw.read_response(false).unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(
        r2.header("docker-content-digest"),
        Some(alpine.manifest.digest.as_str())
    );
    assert_eq!(r2.body, alpine.manifest_bytes);
    let r3 = raw.read_response(true).unwrap();
    assert_eq!(r3.status, 200);
    assert_eq!(r3.content_length(), Some(alpine.config.size));
    let r4 = raw.read_response(false).unwrap();
    assert_eq!(r4.status, 401, "{}", r4.text());
    assert!(r4.header("www-authenticate").is_some());
    assert!(r4.closes(), "Connection: close is echoed");
    let (rest, end) = raw.read_to_end(Duration::from_secs(5));
    assert!(
        rest.is_empty(),
        "bytes after the closing response: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_ne!(
        end,
        End::Open,
        "the relay must close after Connection: close"
    );
}

// ---------------------------------------------------------------------------
// 10. keep-alive and upstream pool reuse
// ---------------------------------------------------------------------------

#[test]
fn keep_alive_client_requests_reuse_pooled_upstream_connections() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    hub.log().clear();
    for i in 0..6 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.body, hub.seeded().alpine.manifest_bytes);
        if i > 0 {
            assert!(
                r.reused_connection,
                "request {i} on a new client connection"
            );
        }
    }
    assert_eq!(
        c.connections_opened(),
        1,
        "one client connection throughout"
    );
    let entries = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    assert_eq!(entries.len(), 6);
    let mut conns: Vec<u64> = entries.iter().map(|e| e.conn).collect();
    conns.dedup();
    assert_eq!(
        conns.len(),
        1,
        "sequential requests through one worker should reuse one upstream connection: {:?}",
        entries.iter().map(|e| e.conn).collect::<Vec<_>>()
    );
    // Blobs too: the registry redirect and the CDN connection are pooled.
    let layer = &hub.seeded().alpine.layers[0];
    for _ in 0..3 {
        let r = get_auth(
            &mut c,
            &format!("/v2/library/alpine/blobs/{}", layer.digest),
            &tok,
        );
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), layer.digest);
    }
    let mut cdn: Vec<u64> = hub
        .log()
        .for_host(Host::Cdn)
        .iter()
        .map(|e| e.conn)
        .collect();
    assert_eq!(cdn.len(), 3);
    cdn.dedup();
    assert_eq!(cdn.len(), 1, "CDN connections are reused too");
}

// ---------------------------------------------------------------------------
// 11. stale pooled upstream connections
// ---------------------------------------------------------------------------

#[test]
fn stale_pooled_upstream_connection_is_retried_silently() {
    let hub = HubDouble::start(Options {
        idle_timeout: Duration::from_millis(700),
        ..Options::default()
    })
    .unwrap();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let layer = hub.seeded().alpine.layers[0].clone();
    let blob = format!("/v2/library/alpine/blobs/{}", layer.digest);

    for round in 0..3 {
        let r = get_auth(&mut c, "/v2/library/alpine/manifests/latest", &tok);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let r = get_auth(&mut c, &blob, &tok);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(sha256(&r.body), layer.digest);
        // Past the double's idle timeout: it closes the pooled connections.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            wait_until(Duration::from_secs(2), || hub
                .active_connections(Host::Registry)
                == 0
                && hub.active_connections(Host::Cdn) == 0),
            "the double did not drop idle connections"
        );
    }
    let manifests = hub
        .log()
        .matching(Host::Registry, "/v2/library/alpine/manifests/latest");
    let ids: std::collections::HashSet<u64> = manifests.iter().map(|e| e.conn).collect();
    assert!(
        ids.len() >= 3,
        "each round needed a fresh upstream connection: {ids:?}"
    );
    assert!(
        !relay.stderr().contains("-> "),
        "a stale connection surfaced as an error: {}",
        relay.stderr()
    );
}

// ---------------------------------------------------------------------------
// 12. HTTP/1.0 and HEAD
// ---------------------------------------------------------------------------

#[test]
fn http10_client_gets_a_complete_response_and_a_close() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let alpine = &hub.seeded().alpine;

    for (target, want) in [
        (
            "/v2/library/alpine/manifests/latest".to_string(),
            alpine.manifest_bytes.clone(),
        ),
        (
            format!("/v2/library/alpine/blobs/{}", alpine.layers[0].digest),
            hub.content()
                .blob(&alpine.layers[0].digest)
                .unwrap()
                .to_vec(),
        ),
        ("/healthz".to_string(), b"ok\n".to_vec()),
    ] {
        let mut raw = Raw::connect(relay.http);
        raw.send(
            format!("GET {target} HTTP/1.0\r\nAuthorization: Bearer {tok}\r\n\r\n").as_bytes(),
        );
        let (bytes, end) = raw.read_to_end(Duration::from_secs(8));
        assert_ne!(
            end,
            End::Open,
            "{target}: HTTP/1.0 without keep-alive must close"
        );
        let r = parse_one(&bytes);
        assert_eq!(r.status, 200, "{target}");
        assert!(r.header("transfer-encoding").is_none(), "{target}");
        assert_eq!(r.content_length(), Some(want.len() as u64), "{target}");
        assert_eq!(r.body, want, "{target}: complete body, nothing more");
    }
}

/// RFC 9112 §6.1: a server must not send `Transfer-Encoding` to an HTTP/1.0
/// client. The double sends tag lists chunked.
#[test]
fn http10_client_never_gets_a_chunked_response() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    // Sanity: through HTTP/1.1 the tag list is chunked.
    let r = get_auth(&mut c, "/v2/library/alpine/tags/list", &tok);
    assert_eq!(r.status, 200);
    assert!(r.chunked, "the double's tag list is expected chunked");

    let mut raw = Raw::connect(relay.http);
    raw.send(
        format!("GET /v2/library/alpine/tags/list HTTP/1.0\r\nAuthorization: Bearer {tok}\r\n\r\n")
            .as_bytes(),
    );
    let (bytes, end) = raw.read_to_end(Duration::from_secs(8));
    assert_ne!(end, End::Open, "HTTP/1.0 without keep-alive must close");
    let r = parse_one(&bytes);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "chunked sent to an HTTP/1.0 client: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("body is not the tag list ({e}): {:?}", r.text()));
    assert_eq!(v["name"], "library/alpine");
}

#[test]
fn head_responses_carry_content_length_and_no_body() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let auth = format!("Bearer {tok}");
    let alpine = &hub.seeded().alpine;
    let layer = &alpine.layers[0];

    // Each HEAD is followed on the same connection by a GET /healthz: any
    // body bytes after a HEAD head would break the next response's parse.
    let cases: Vec<(String, u64, Option<&str>, u16)> = vec![
        (
            "/v2/library/alpine/manifests/latest".into(),
            alpine.manifest.size,
            Some(alpine.manifest.digest.as_str()),
            200,
        ),
        (
            format!("/v2/library/alpine/blobs/{}", layer.digest),
            layer.size,
            None,
            200,
        ),
        ("/healthz".into(), 3, None, 200),
        ("/v2/library/alpine/manifests/nope".into(), 0, None, 404),
        ("/v2/Bad/manifests/latest".into(), 0, None, 400),
    ];
    let mut raw = Raw::connect(relay.http);
    for (target, len, digest, status) in &cases {
        let mut two = request("HEAD", target, &[("Authorization", &auth)]);
        two.extend(request("GET", "/healthz", &[]));
        raw.send(&two);
        let h = raw.read_response(true).unwrap();
        assert_eq!(h.status, *status, "HEAD {target}");
        let cl = h.content_length();
        assert!(cl.is_some(), "HEAD {target} without Content-Length");
        if *status == 200 {
            assert_eq!(cl, Some(*len), "HEAD {target}");
        }
        if let Some(d) = digest {
            assert_eq!(h.header("docker-content-digest"), Some(*d));
        }
        let next = raw.read_response(false).unwrap();
        assert_eq!(
            (next.status, next.text().as_str()),
            (200, "ok\n"),
            "after HEAD {target}"
        );
    }
    let logged: Vec<_> = hub
        .log()
        .entries()
        .into_iter()
        .filter(|e| e.target.contains("/manifests/latest") && e.has_bearer_auth())
        .map(|e| e.method)
        .collect();
    assert!(
        logged.iter().all(|m| m == "HEAD"),
        "HEAD stays HEAD upstream: {logged:?}"
    );
    assert!(!logged.is_empty());
}

// ---------------------------------------------------------------------------
// 13. client timeouts
// ---------------------------------------------------------------------------

#[test]
fn incomplete_request_head_gets_408_after_client_header_timeout() {
    let hub = hub();
    let relay = Relay::start(&hub); // client_header_secs = 2
    let mut raw = Raw::connect(relay.http);
    raw.send(b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\n");
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(8));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?} with client_header_secs = 2"
    );
    let r = assert_error_then_close(&bytes, end, 408);
    assert!(r.text().contains("request head"), "{}", r.text());
    assert!(hub.log().is_empty());
}

#[test]
fn trickled_request_head_is_cut_at_the_header_deadline() {
    let hub = hub();
    let relay = Relay::start_with(&short_client_timeouts_config(&hub)); // header 1 s
    let mut raw = Raw::connect(relay.http);
    let mut writer = raw.s.try_clone().unwrap();
    // One byte every 200 ms: never idle for long, never done.
    let head = b"GET /v2/ HTTP/1.1\r\nHost: mirror.test\r\nUser-Agent: slowloris-slowloris\r\n\r\n";
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let trickle = std::thread::spawn(move || {
        for b in head {
            if st.load(Ordering::SeqCst) || writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = trickle.join();
    assert!(
        took < Duration::from_secs(3),
        "a trickling head held the connection for {took:?} (client_header_secs = 1)"
    );
    assert_error_then_close(&bytes, end, 408);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_client_idle_timeout() {
    let hub = hub();
    let relay = Relay::start_with(&short_client_timeouts_config(&hub)); // idle 1 s

    // After a response.
    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", "/healthz", &[]));
    let r = raw.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    let took = t.elapsed();
    assert_ne!(end, End::Open, "idle connection never closed");
    assert!(
        bytes.is_empty(),
        "an idle close says nothing: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "idle close after {took:?} with client_idle_secs = 1"
    );

    // A connection that never sends anything.
    let mut raw = Raw::connect(relay.http);
    let t = Instant::now();
    let (bytes, end) = raw.read_to_end(Duration::from_secs(6));
    assert_ne!(end, End::Open);
    assert!(bytes.is_empty());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

// ---------------------------------------------------------------------------
// 14. token POST bodies
// ---------------------------------------------------------------------------

const TOKEN_FORM: &str = "grant_type=password&service=registry.docker.io&scope=repository%3Aalpine%3Apull&client_id=robustness&username=alice&password=wonderland";

/// Checks a token response and that the token pulls through the relay.
fn assert_token_works(relay: &Relay, r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("token JSON");
    let tok = v["access_token"].as_str().expect("access_token");
    let mut c = relay.client();
    let m = get_auth(&mut c, "/v2/alpine/manifests/latest", tok);
    assert_eq!(m.status, 200, "{}", m.text());
}

#[test]
fn token_post_with_a_chunked_body_works() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    let (a, b) = TOKEN_FORM.split_at(40);
    let mut first = request(
        "POST",
        "/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    first.extend_from_slice(format!("{:x};ext=1\r\n{a}\r\n", a.len()).as_bytes());
    raw.send(&first);
    std::thread::sleep(Duration::from_millis(300));
    raw.send(format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).as_bytes());
    let r = raw.read_response(false).unwrap();
    assert_token_works(&relay, &r);
    let posted: Vec<_> = hub
        .log()
        .for_host(Host::Token)
        .into_iter()
        .filter(|e| e.method == "POST")
        .collect();
    assert_eq!(posted.len(), 1);
    let body = String::from_utf8_lossy(&posted[0].body).into_owned();
    assert!(
        body.contains("grant_type=password") && body.contains("username=alice"),
        "{body}"
    );
    assert!(
        body.contains("library%2Falpine") || body.contains("library/alpine"),
        "scope mapped to library/: {body}"
    );
    // The connection is still usable after a chunked body.
    raw.send(&request("GET", "/healthz", &[]));
    let h = raw.read_response(false).unwrap();
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
}

#[test]
fn token_post_with_expect_100_continue_works() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let len = TOKEN_FORM.len().to_string();
    // docker login credentials ride along and must reach the token host.
    let basic = basic_auth("alice", "wonderland");
    for chunked in [false, true] {
        let mut raw = Raw::connect(relay.http);
        let framing = if chunked {
            ("Transfer-Encoding", "chunked")
        } else {
            ("Content-Length", len.as_str())
        };
        raw.send(&request(
            "POST",
            "/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                framing,
                ("Expect", "100-continue"),
                ("Authorization", &basic),
            ],
        ));
        // The body is only sent after the interim response.
        let interim = raw.read_head().expect("100 Continue");
        assert_eq!(interim.status, 100, "chunked={chunked}");
        if chunked {
            raw.send(format!("{:x}\r\n{TOKEN_FORM}\r\n0\r\n\r\n", TOKEN_FORM.len()).as_bytes());
        } else {
            raw.send(TOKEN_FORM.as_bytes());
        }
        let r = raw.read_response(false).unwrap();
        assert_token_works(&relay, &r);
        raw.send(&request("GET", "/healthz", &[]));
        let h = raw.read_response(false).unwrap();
        assert_eq!(h.status, 200, "chunked={chunked}");
    }
    let posts: Vec<_> = hub
        .log()
        .for_host(Host::Token)
        .into_iter()
        .filter(|e| e.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(posts.iter().all(|e| e.has_basic_auth()));
    assert!(posts
        .iter()
        .all(|e| e.body.starts_with(b"grant_type=password")));
}

// ---------------------------------------------------------------------------
// 15. memory
// ---------------------------------------------------------------------------

#[test]
fn large_blob_streams_in_bounded_memory() {
    const SIZE: usize = 128 << 20;
    let hub = hub();
    let relay = Relay::start(&hub);
    let digest = hub.add_random_blob("library/alpine", SIZE, 0x5eed_0015);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let pid = relay_pid(&relay);
    let before = proc_status_bytes(pid, "VmHWM:");

    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &format!("Bearer {tok}"))],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(SIZE as u64));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut got = raw.buf.len();
    ctx.update(&raw.buf);
    raw.buf.clear();
    let mut tmp = vec![0u8; 1 << 20];
    let t = Instant::now();
    while got < SIZE {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "too slow: {got} bytes"
        );
        let n = raw.s.read(&mut tmp[..(SIZE - got).min(1 << 20)]).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        ctx.update(&tmp[..n]);
        got += n;
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(format!("sha256:{hex}"), digest);

    let peak = proc_status_bytes(pid, "VmHWM:");
    eprintln!(
        "relay VmHWM {} KiB before, {} KiB after 128 MiB in {:?}",
        before / 1024,
        peak / 1024,
        t.elapsed()
    );
    assert!(
        peak < 64 << 20,
        "relay peak RSS {} MiB while streaming 128 MiB",
        peak >> 20
    );
}

// ---------------------------------------------------------------------------
// more failure modes
// ---------------------------------------------------------------------------

#[test]
fn oversized_head_with_unread_bytes_still_delivers_its_431() {
    let hub = hub();
    let relay = Relay::start(&hub);
    // The relay stops reading at max_header_bytes and closes with bytes
    // unread; the client must still be able to read the 431 (no reset first).
    for _ in 0..10 {
        let mut raw = Raw::connect(relay.http);
        let big = "a".repeat(64 * 1024);
        let _ = raw.s.write_all(&request("GET", "/v2/", &[("X-Big", &big)]));
        let (bytes, end) = raw.read_to_end(Duration::from_secs(5));
        assert_error_then_close(&bytes, end, 431);
    }
}

#[test]

fn chunked_token_post_followed_by_a_pipelined_request_is_answered() {
    let hub = hub();
    let relay = Relay::start(&hub);
    let mut raw = Raw::connect(relay.http);
    let (a, b) = TOKEN_FORM.split_at(40);
    let mut first = request(
        "POST",
        "/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    first.extend_from_slice(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes());
    raw.send(&first);
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).into_bytes();
    rest.extend(request("GET", "/healthz", &[]));
    raw.send(&rest);
    let r = raw.read_response(false).expect("an answer to the POST");
    assert_token_works(&relay, &r);
}

#[test]
fn client_that_stops_reading_is_cut_after_client_write_timeout() {
    let hub = hub();
    let relay = Relay::start(&hub); // client_write_secs = 5
    let digest = hub.add_random_blob("library/alpine", 64 << 20, 0x5eed_0016);
    let mut c = relay.client();
    let tok = anonymous_token(&relay, &mut c, "library/alpine");
    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/alpine/blobs/{digest}"),
        &[("Authorization", &format!("Bearer {tok}"))],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    // Stop reading, keep the connection open.
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(12), || hub
            .active_connections(Host::Cdn)
            == 0),
        "the relay held its CDN connection for a client that reads nothing"
    );
    eprintln!("cut after {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_secs(4));
}

#[test]

fn empty_body_under_a_non_empty_digest_is_not_served_as_complete() {
    let digest = sha256(b"not empty");
    let fake = FakeUpstream::start(vec![Canned {
        path: format!("/v2/library/empty/blobs/{digest}"),
        bytes: length_response("application/octet-stream", &digest, b""),
        after: After::KeepAlive,
    }]);
    let relay = Relay::start_with(&config_with_upstream(&fake.url()));
    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/empty/blobs/{digest}"),
        &[],
    ));
    match raw.read_response(false) {
        Ok(r) => assert_ne!(
            r.status, 200,
            "a complete, empty 200 was served for {digest}: {:?}",
            r.headers
        ),
        Err(e) => panic!("no response at all: {e}"),
    }
}

#[test]
fn upstream_stalling_mid_body_ends_the_client_connection() {
    let data = hubdouble::random_bytes(1 << 20, 0x5eed_0017).to_vec();
    let digest = sha256(&data);
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&data[..300_000]);
    let fake = FakeUpstream::start(vec![Canned {
        path: format!("/v2/library/stall/blobs/{digest}"),
        bytes,
        after: After::Hold,
    }]);
    let relay = Relay::start_with(&config_with_upstream(&fake.url())); // upstream_read 2 s
    let mut raw = Raw::connect(relay.http);
    raw.send(&request(
        "GET",
        &format!("/v2/library/stall/blobs/{digest}"),
        &[],
    ));
    let head = raw.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(data.len() as u64));
    let body = read_until_cut(&mut raw, Instant::now());
    assert!(body.len() <= 300_000, "{}", body.len());
    assert_eq!(&body[..], &data[..body.len()]);
    assert!(
        wait_until(Duration::from_secs(3), || fake
            .released
            .load(Ordering::SeqCst)
            == 1),
        "the stalled upstream connection was not closed"
    );
}

/// A small body (a manifest by tag) sent apart from its head is gathered and
/// sent whole; one that stalls half way gives the client the head and the
/// bytes that came, then the end of the connection after the read timeout,
/// and the relay goes on serving (it once crashed here).
#[test]
fn small_body_split_from_its_head_or_stalled_half_way() {
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"layers\":[],\"pad\":\"{}\"}}",
        hubdouble::OCI_MANIFEST,
        "x".repeat(1800)
    )
    .into_bytes();
    let mut whole = length_response(hubdouble::OCI_MANIFEST, &sha256(&manifest), &manifest);
    let head_len = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let half = whole[..head_len + manifest.len() / 2].to_vec();
    whole.truncate(head_len + manifest.len());
    let fake = FakeUpstream::start(vec![
        Canned {
            path: "/v2/library/split/manifests/1".into(),
            bytes: whole,
            after: After::SplitAt(head_len),
        },
        Canned {
            path: "/v2/library/stall/manifests/1".into(),
            bytes: half,
            after: After::Hold,
        },
    ]);
    let mut relay = Relay::start_with(&config_with_upstream(&fake.url())); // upstream_read 2 s
    let mut c = relay.client();
    for _ in 0..2 {
        let r = c.get("/v2/library/split/manifests/1").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, manifest);
    }

    let mut raw = Raw::connect(relay.http);
    raw.send(&request("GET", "/v2/library/stall/manifests/1", &[]));
    let t = Instant::now();
    let head = raw.read_head().expect("the head of a stalled small body");
    assert_eq!(head.status, 200);
    assert_eq!(head.content_length(), Some(manifest.len() as u64));
    let body = read_until_cut(&mut raw, t);
    assert!(body.len() < manifest.len(), "a cut body looked complete");
    assert_eq!(&body[..], &manifest[..body.len()]);

    // Still serving, on both workers.
    assert!(relay.alive(), "the relay died: {}", relay.stderr());
    for _ in 0..4 {
        let mut c = relay.client();
        let r = c.get("/v2/library/split/manifests/1").unwrap();
        assert_eq!(r.status, 200);
    }
}

#[test]
fn malformed_upstream_response_is_502() {
    let routes = vec![
        Canned {
            path: "/v2/library/badlen/manifests/latest".into(),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}".to_vec(),
            after: After::KeepAlive,
        },
        Canned {
            path: "/v2/library/nothttp/manifests/latest".into(),
            bytes: b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
            after: After::Close,
        },
        Canned {
            path: "/v2/library/twolengths/manifests/latest".into(),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            after: After::KeepAlive,
        },
    ];
    let fake = FakeUpstream::start(routes);
    let mut relay = Relay::start_with(&config_with_upstream(&fake.url()));
    let mut c = relay.client();
    for name in ["badlen", "nothttp", "twolengths"] {
        let r = c
            .get(&format!("/v2/library/{name}/manifests/latest"))
            .unwrap();
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(error_code(&r.body), "UNAVAILABLE");
        assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
    }
    assert!(relay.alive());
}

/// skopeo and podman try https first on an insecure registry: a TLS
/// ClientHello on the plain port must be refused at once, not after the
/// header timeout, so that they fall back to http without a 10 s stall.
#[test]
fn tls_client_hello_on_the_plain_port_is_refused_at_once() {
    let hub = HubDouble::start(Options::default()).unwrap();
    let relay = Relay::start_with(
        &common::config_for(&hub, "").replace("client_header_secs = 2", "client_header_secs = 20"),
    );
    let mut raw = relay.client();
    let started = std::time::Instant::now();
    raw.write_raw(&[
        0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
    ])
    .unwrap();
    let got = raw.read_raw(Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!raw.is_connected());
    // Requests after empty lines are still fine.
    let mut ok = relay.client();
    ok.write_raw(b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = ok.read_response(false).unwrap();
    assert_eq!(r.status, 200);
}
