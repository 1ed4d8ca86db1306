//! One request/response exchange with an upstream: write the request head
//! (and a small body), read and parse the response head. The body is left on
//! the connection for the caller to stream.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use super::pool::{Conn, PoolKey, Upstreams};
use super::trust::TrustKey;
use crate::error::UpstreamError;
use crate::wire::http::response::write_decimal;
use crate::wire::http::RespFraming;
use crate::wire::http::{has_token, name_eq, parse_content_length, HeadScanner};
use crate::wire::method::Method;
use crate::wire::url::{Origin, Url};

/// Header lines in an upstream response head we accept.
const MAX_RESPONSE_HEADERS: usize = 128;

/// A request to send upstream.
pub struct Exchange<'a> {
    pub method: Method,
    pub url: &'a Url,
    pub trust: TrustKey,
    /// Header lines to send besides Host and Content-Length.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: Option<&'a [u8]>,
    /// How long a response (and each read of its body) may take; `None`:
    /// the config's `upstream_read`. The shared tier's store has a
    /// `timeout` of its own.
    pub read_timeout: Option<Duration>,
}

/// A parsed response head. Header names and values are ranges into the
/// connection's buffer, valid until the head is consumed.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: RespFraming,
    pub keep_alive: bool,
    headers: Vec<[u32; 4]>,
}

impl ResponseHead {
    /// Header lines `(name, value)` borrowed from `conn`'s buffer.
    pub fn headers<'c>(&'c self, conn: &'c Conn) -> impl Iterator<Item = (&'c str, &'c [u8])> + 'c {
        let buf = conn.buffered();
        self.headers.iter().map(move |r| {
            let name = std::str::from_utf8(&buf[r[0] as usize..r[1] as usize]).unwrap_or("");
            (name, &buf[r[2] as usize..r[3] as usize])
        })
    }

    /// First value of header `name`.
    pub fn header<'c>(&'c self, conn: &'c Conn, name: &str) -> Option<&'c [u8]> {
        self.headers(conn)
            .find(|(n, _)| name_eq(n, name))
            .map(|(_, v)| v)
    }
}

impl Upstreams {
    /// Sends `ex` and reads the response head. A pooled connection that
    /// fails before any response byte is replaced by a fresh one, once (see
    /// [`replay_safe`]).
    pub async fn send(&self, ex: &Exchange<'_>) -> Result<(Conn, ResponseHead), UpstreamError> {
        let mut req = build_request(ex);
        let head_only = ex.method == Method::Head;
        let timed = |mut conn: Conn| {
            if let Some(t) = ex.read_timeout {
                conn.read_timeout = t;
            }
            conn
        };
        if let Some(conn) = self.checkout(&ex.url.origin, ex.trust).map(timed) {
            match attempt(conn, req, head_only).await {
                Ok(r) => return Ok(r),
                Err((e, back)) if e.retryable() && replay_safe(ex.method) => req = back,
                Err((e, _)) => return Err(e),
            }
        }
        let key = PoolKey {
            origin: ex.url.origin.clone(),
            trust: ex.trust,
        };
        let conn = timed(self.connect(&key).await?);
        attempt(conn, req, head_only).await.map_err(|(e, _)| e)
    }
}

/// Whether a request whose pooled connection failed before any response
/// byte may be sent again on a new one (RFC 9112 9.3.1: when the client
/// knows it is safe). GET and HEAD are; so are the only POSTs ocirelay sends
/// upstream, token requests (RFC 6749 4.1.3, 4.3: they grant a token and
/// change nothing), and a stale pooled connection answered them with a 502.
fn replay_safe(method: Method) -> bool {
    method.idempotent_read() || method == Method::Post
}

pub(super) fn build_request(ex: &Exchange<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + ex.body.map_or(0, <[u8]>::len));
    out.extend_from_slice(ex.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(ex.url.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    write_authority(&mut out, &ex.url.origin);
    out.extend_from_slice(b"\r\n");
    for (name, value) in ex.headers {
        crate::wire::http::write_header(&mut out, name, value);
    }
    if let Some(body) = ex.body {
        crate::wire::http::response::write_content_length(&mut out, body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = ex.body {
        out.extend_from_slice(body);
    }
    out
}

/// Appends what [`Origin::authority`] returns, without making a `String` of
/// it for every request.
fn write_authority(out: &mut Vec<u8>, o: &Origin) {
    let v6 = o.host.contains(':');
    if v6 {
        out.push(b'[');
    }
    out.extend_from_slice(o.host.as_bytes());
    if v6 {
        out.push(b']');
    }
    if o.port != o.scheme.default_port() {
        out.push(b':');
        write_decimal(out, u64::from(o.port));
    }
}

async fn attempt(
    mut conn: Conn,
    req: Vec<u8>,
    head_only: bool,
) -> Result<(Conn, ResponseHead), (UpstreamError, Vec<u8>)> {
    // One deadline for the whole step, sending the request and reading the
    // response head: one timer per exchange instead of one per write and
    // per read.
    let limit = conn.read_timeout;
    let sent = Cell::new(false);
    let step = send_and_read_head(&mut conn, req, head_only, &sent);
    match monoio::time::timeout(limit, step).await {
        Ok(Ok(head)) => Ok((conn, head)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err((
            UpstreamError::Timeout {
                host: conn.key.origin.host.clone(),
                phase: if sent.get() {
                    "waiting for response"
                } else {
                    "sending request"
                },
            },
            Vec::new(),
        )),
    }
}

/// Writes `req`, then reads the response head; `sent` is set once the
/// request is out. On failure `req` is handed back for a retry.
async fn send_and_read_head(
    conn: &mut Conn,
    req: Vec<u8>,
    head_only: bool,
    sent: &Cell<bool>,
) -> Result<ResponseHead, (UpstreamError, Vec<u8>)> {
    let (res, req) = conn.io.write_all(req).await;
    if let Err(source) = res {
        return Err((
            UpstreamError::Io {
                host: conn.key.origin.host.clone(),
                source,
                before_response: conn.reused,
            },
            req,
        ));
    }
    sent.set(true);
    match read_head(conn, head_only).await {
        Ok(head) => Ok(head),
        Err(e) => Err((e, req)),
    }
}

/// Reads until a complete response head is buffered and parses it; skips
/// interim 1xx responses.
pub(super) async fn read_head(
    conn: &mut Conn,
    head_only: bool,
) -> Result<ResponseHead, UpstreamError> {
    let mut scanner = HeadScanner::new();
    let mut got_any = false;
    loop {
        // The same framing rule as for requests: a bare LF is refused, not
        // framed one way here and another by the parser.
        let found = scanner
            .scan(conn.buffered())
            .map_err(|_| UpstreamError::BadResponse {
                host: conn.key.origin.host.clone(),
                reason: "bare LF in the response head",
            })?;
        if let Some(end) = found {
            let head =
                parse_head(conn, end, head_only).map_err(|reason| UpstreamError::BadResponse {
                    host: conn.key.origin.host.clone(),
                    reason,
                })?;
            if (100..200).contains(&head.status) {
                conn.consume(head.head_len);
                scanner = HeadScanner::new();
                continue;
            }
            return Ok(head);
        }
        match conn.read_more().await {
            Ok(0) => {
                return Err(UpstreamError::Io {
                    host: conn.key.origin.host.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before response",
                    ),
                    before_response: conn.reused && !got_any,
                })
            }
            Ok(_) => got_any = true,
            Err(source) => {
                return Err(UpstreamError::Io {
                    host: conn.key.origin.host.clone(),
                    source,
                    before_response: conn.reused && !got_any,
                })
            }
        }
    }
}

fn parse_head(conn: &Conn, end: usize, head_only: bool) -> Result<ResponseHead, &'static str> {
    let buf = conn.buffered();
    // Uninitialised slots: writing 128 empty headers first costs more than
    // parsing a typical head.
    let mut storage = [MaybeUninit::uninit(); MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        &buf[..end],
        &mut storage,
    );
    match parsed {
        // The parse must end the head where the scanner did.
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(httparse::Status::Complete(_)) => return Err("malformed head"),
        Ok(httparse::Status::Partial) => return Err("incomplete head"),
        Err(httparse::Error::TooManyHeaders) => return Err("too many headers"),
        Err(_) => return Err("malformed head"),
    }
    let status = resp.code.ok_or("no status")?;
    let minor = resp.version.ok_or("no version")?;
    let base = buf.as_ptr() as usize;
    let mut headers = Vec::with_capacity(resp.headers.len());
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = minor == 1;
    for h in resp.headers.iter() {
        let ns = h.name.as_ptr() as usize - base;
        let vs = h.value.as_ptr() as usize - base;
        headers.push([
            ns as u32,
            (ns + h.name.len()) as u32,
            vs as u32,
            (vs + h.value.len()) as u32,
        ]);
        if name_eq(h.name, "content-length") {
            let n = parse_content_length(h.value).ok_or("invalid Content-Length")?;
            if length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length");
            }
            length = Some(n);
        } else if name_eq(h.name, "transfer-encoding") {
            // The last coding decides; anything but chunked is read to close.
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keep_alive = false;
            }
        } else if name_eq(h.name, "connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        RespFraming::None
    } else if chunked {
        RespFraming::Chunked
    } else if let Some(n) = length {
        RespFraming::Length(n)
    } else {
        keep_alive = false;
        RespFraming::Close
    };
    Ok(ResponseHead {
        status,
        head_len: end,
        framing,
        keep_alive,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_the_origins_authority() {
        for u in [
            "https://registry-1.docker.io/v2/",
            "https://127.0.0.1:5000/v2/",
            "http://localhost:80/v2/",
            "http://[::1]:8080/v2/",
            "https://[2001:db8::1]/v2/",
        ] {
            let o = Url::parse(u).unwrap().origin;
            let mut out = Vec::new();
            write_authority(&mut out, &o);
            assert_eq!(out, o.authority().as_bytes(), "{u}");
        }
    }
}
