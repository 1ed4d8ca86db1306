//! A raw TCP client to the relay ([`Raw`]), for byte-exact requests and for
//! watching how (and when) the relay ends a connection, with the response
//! parsing and the assertions that go with it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hubdouble::client::Response;

use super::oci::{bearer, error_code};

/// How reading a connection to its end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly close (FIN).
    Eof,
    /// Reset or another error: also a close, an abortive one.
    Reset,
    /// Still open when the wait ran out.
    Open,
}

/// `Connection: close` on a response.
pub trait Closes {
    /// Whether the response says `Connection: close`.
    fn closes(&self) -> bool;
}

impl Closes for Response {
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Parses the response head at the start of `bytes`: the response (without
/// its body) and the head's length, or `None` while the head is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(Response, usize)>, httparse::Error> {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut storage);
    let n = match r.parse(bytes)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let resp = Response {
        status: r.code.unwrap_or(0),
        reason: r.reason.unwrap_or("").to_string(),
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
        ..Response::default()
    };
    Ok(Some((resp, n)))
}

/// Parses `bytes` as one response whose body is everything after the head
/// (no further reads).
pub fn parse_one(bytes: &[u8]) -> Response {
    match parse_head(bytes) {
        Ok(Some((mut r, n))) => {
            r.body = bytes[n..].to_vec();
            r
        }
        other => panic!(
            "no complete response head ({:?}) in {:?}",
            other.map(|h| h.map(|(_, n)| n)),
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ),
    }
}

/// A raw client connection to the relay. Responses it reads are
/// [`Response`]s with `chunked` set as they came; `reused_connection` is not
/// tracked.
pub struct Raw {
    /// The connection.
    pub s: TcpStream,
    /// Bytes read and not yet taken.
    pub buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Connects to `addr`, sends `bytes`, and reads until the relay closes
    /// or `wait` passes (see [`Raw::read_to_end`]).
    pub fn one_shot(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, End) {
        let mut raw = Raw::connect(addr);
        raw.send(bytes);
        raw.read_to_end(wait)
    }

    /// Connects to `addr` and sends `GET target` with the bearer token `tok`.
    pub fn get_with_token(addr: SocketAddr, target: &str, tok: &str) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&request("GET", target, &[("Authorization", &bearer(tok))]));
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to relay");
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response head (1xx included) and returns it with its length
    /// removed from the buffer.
    pub fn read_head(&mut self) -> io::Result<Response> {
        loop {
            match parse_head(&self.buf) {
                Ok(Some((resp, n))) => {
                    self.buf.drain(..n);
                    return Ok(resp);
                }
                Ok(None) => {}
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
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let resp = loop {
            let r = self.read_head()?;
            if !(100..200).contains(&r.status) {
                break r;
            }
        };
        if head || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        self.read_response_body_after(resp)
    }

    /// Reads the body of `resp` (its head already read) by its framing.
    pub fn read_response_body_after(&mut self, mut resp: Response) -> io::Result<Response> {
        resp.chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if resp.chunked {
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

    /// Reads (buffered bytes first) until the peer closes or `wait` passes.
    pub fn read_to_end(&mut self, wait: Duration) -> (Vec<u8>, End) {
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

/// A request head for the relay, with `Host` and the extra header lines.
pub fn request(method: &str, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: mirror.test\r\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Asserts that `raw` (everything the relay sent on a connection that then
/// ended) is one complete OCI JSON error response with `status`, and that the
/// relay closed the connection.
pub fn assert_error_then_close(raw: &[u8], end: End, status: u16) -> Response {
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

/// Reads the rest of a response the relay must cut because its upstream
/// stalled: the connection ends once `upstream_read_secs` (2 s in these
/// configs) has run out since `since`, not before and not much later.
pub fn read_until_cut(raw: &mut Raw, since: Instant) -> Vec<u8> {
    let (body, end) = raw.read_to_end(Duration::from_secs(10));
    let took = since.elapsed();
    assert_ne!(end, End::Open, "client left hanging on a stalled upstream");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "cut after {took:?} with upstream_read_secs = 2"
    );
    body
}

/// A response body read as it arrives and hashed (sha256), never held
/// whole: for blobs of hundreds of MiB.
pub struct HashedBody {
    raw: Raw,
    sha: ring::digest::Context,
    read: u64,
}

impl HashedBody {
    /// The body of the response whose head `raw` just read.
    pub fn after_head(mut raw: Raw) -> HashedBody {
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        sha.update(&raw.buf);
        let read = raw.buf.len() as u64;
        raw.buf.clear();
        HashedBody { raw, sha, read }
    }

    /// Reads until `upto` bytes of the body have arrived or the connection
    /// ends (or fails); the bytes read so far.
    pub fn read_until(&mut self, upto: u64) -> u64 {
        let mut buf = vec![0u8; 1 << 20];
        while self.read < upto {
            let want = buf.len().min((upto - self.read) as usize);
            match self.raw.s.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.sha.update(&buf[..n]);
                    self.read += n as u64;
                }
            }
        }
        self.read
    }

    /// `sha256:<hex>` of what was read.
    pub fn digest(self) -> String {
        let hex: String = self
            .sha
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }
}
