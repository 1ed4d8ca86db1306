//! A small blocking HTTP/1.1 client for tests: keep-alive over one connection, TLS against a
//! given CA, Content-Length / chunked / read-to-close bodies, read timeouts everywhere, and
//! raw access for pipelining and malformed-input tests.

use base64::Engine;
use rustls::pki_types::ServerName;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::url::Url;

/// A complete response.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD, 1xx, 204, 304).
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Whether this response came over a connection that had already carried one.
    pub reused_connection: bool,
}

impl Response {
    /// First value of a header, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `Content-Length` parsed, if present.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        };
        r.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::Error::new(io::ErrorKind::TimedOut, "read timed out"),
            _ => e,
        })
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A blocking HTTP/1.1 client bound to one address; it reuses one connection while the
/// server keeps it alive and reconnects when needed.
pub struct Client {
    addr: SocketAddr,
    host_header: String,
    tls: Option<(ServerName<'static>, Arc<rustls::ClientConfig>)>,
    stream: Option<Stream>,
    buf: Vec<u8>,
    timeout: Duration,
    connects: u64,
    served: u64,
    nothing_read: bool,
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// How an exchange failed.
enum Failure {
    /// Nothing came back (write failed, or the peer closed/reset before any response byte):
    /// on a reused keep-alive connection this is retried once.
    Stale(io::Error),
    /// Anything else.
    Final(io::Error),
}

impl Client {
    /// A client for `addr`; `tls` is `(server name, CA PEM)` (the server name may be an IP
    /// such as `127.0.0.1`). Connects lazily.
    pub fn new(addr: SocketAddr, tls: Option<(&str, &str)>) -> io::Result<Client> {
        let tls = match tls {
            Some((name, pem)) => {
                let name = ServerName::try_from(name.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Some((name, crate::tls::client_config(pem)?))
            }
            None => None,
        };
        Ok(Client {
            addr,
            host_header: addr.to_string(),
            tls,
            stream: None,
            buf: Vec::new(),
            timeout: Duration::from_secs(10),
            connects: 0,
            served: 0,
            nothing_read: false,
        })
    }

    /// A client for a base URL such as `https://127.0.0.1:5000` (path ignored); `ca_pem` is
    /// required for `https`.
    pub fn from_url(url: &str, ca_pem: Option<&str>) -> io::Result<Client> {
        let u = Url::parse(url).ok_or_else(|| invalid(format!("bad url {url}")))?;
        let addr = u.socket_addr()?;
        let mut c = match (u.scheme.as_str(), ca_pem) {
            ("https", Some(pem)) => Client::new(addr, Some((&u.host, pem)))?,
            ("https", None) => return Err(invalid("https needs a CA PEM")),
            _ => Client::new(addr, None)?,
        };
        c.host_header = u.authority();
        Ok(c)
    }

    /// Read/write/connect timeout of every socket operation (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        if let Some(s) = &self.stream {
            let _ = s.tcp().set_read_timeout(Some(timeout));
            let _ = s.tcp().set_write_timeout(Some(timeout));
        }
    }

    /// The `Host` header sent when the caller gives none (default `ip:port`).
    pub fn set_host_header(&mut self, host: &str) {
        self.host_header = host.to_string();
    }

    /// The address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections this client has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connects
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Opens the connection now (TLS handshake included) if none is open.
    pub fn connect(&mut self) -> io::Result<()> {
        if self.stream.is_some() {
            return Ok(());
        }
        let tcp = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((name, config)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(io::Error::other)?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock)?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        self.stream = Some(stream);
        self.buf.clear();
        self.connects += 1;
        self.served = 0;
        Ok(())
    }

    /// Closes the connection (the next request opens a new one).
    pub fn disconnect(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.tcp().shutdown(Shutdown::Both);
        }
        self.buf.clear();
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.connect()?;
        Ok(self.stream.as_mut().expect("connected"))
    }

    /// Sends a request and reads its response. `headers` are sent as given (a `Host` is added
    /// unless present; `Content-Length` is added for a body unless present or chunked).
    /// A request on a kept-alive connection that the server had closed is retried once on a
    /// new connection.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let reused = self.stream.is_some() && self.served > 0;
        match self.exchange(method, target, headers, body) {
            Ok(r) => Ok(r),
            Err(Failure::Stale(_)) if reused => {
                self.disconnect();
                self.exchange(method, target, headers, body)
                    .map_err(|(Failure::Stale(e) | Failure::Final(e))| e)
            }
            Err(Failure::Stale(e) | Failure::Final(e)) => Err(e),
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, Failure> {
        if let Err(e) = self.send_request(method, target, headers, body) {
            self.disconnect();
            return Err(Failure::Stale(e));
        }
        self.nothing_read = false;
        self.read_response(method == "HEAD").map_err(|e| {
            let stale = self.nothing_read;
            self.disconnect();
            if stale {
                Failure::Stale(e)
            } else {
                Failure::Final(e)
            }
        })
    }

    /// GET `target` with no extra headers.
    pub fn get(&mut self, target: &str) -> io::Result<Response> {
        self.request("GET", target, &[], None)
    }

    /// HEAD `target` with no extra headers.
    pub fn head(&mut self, target: &str) -> io::Result<Response> {
        self.request("HEAD", target, &[], None)
    }

    /// GET `target` with `headers`.
    pub fn get_with(&mut self, target: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.request("GET", target, headers, None)
    }

    /// Writes one request without reading the response (pipelining: follow with
    /// [`Client::read_response`]).
    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<()> {
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut out = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
        let _ = write!(out, "{method} {target} HTTP/1.1\r\n");
        if !has("host") {
            let _ = write!(out, "Host: {}\r\n", self.host_header);
        }
        for (k, v) in headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if let Some(b) = body {
            if !has("content-length") && !has("transfer-encoding") {
                let _ = write!(out, "Content-Length: {}\r\n", b.len());
            }
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        self.write_raw(&out)
    }

    /// Writes raw bytes on the connection (opening it if needed).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.stream()?;
        s.write_all(bytes)?;
        s.flush()
    }

    /// Reads whatever arrives (buffered bytes first) until the peer closes or `wait` has
    /// passed, and returns it. Never blocks longer than `wait`.
    pub fn read_raw(&mut self, wait: Duration) -> io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.buf);
        let deadline = Instant::now() + wait;
        let timeout = self.timeout;
        let mut closed = false;
        if let Some(s) = self.stream.as_mut() {
            let mut tmp = vec![0u8; 64 * 1024];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = s
                    .tcp()
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))));
                match s.read(&mut tmp) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => out.extend_from_slice(&tmp[..n]),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let _ = s.tcp().set_read_timeout(Some(timeout));
        }
        if closed {
            self.disconnect();
        }
        Ok(out)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let s = self.stream.as_mut().ok_or_else(|| eof("not connected"))?;
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads exactly `n` more bytes of body (buffered bytes first).
    fn take_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let have = self.buf.len().min(n);
        let mut body = vec![0u8; n];
        body[..have].copy_from_slice(&self.buf[..have]);
        self.buf.drain(..have);
        let s = self.stream.as_mut().ok_or_else(|| eof("not connected"))?;
        let mut at = have;
        while at < n {
            match s.read(&mut body[at..]) {
                Ok(0) => return Err(eof(&format!("body cut after {at} of {n} bytes"))),
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(body)
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(invalid("line too long"));
            }
            if self.fill()? == 0 {
                return Err(eof("eof in chunked body"));
            }
        }
    }

    /// Reads one response from the connection; `head` tells that it answers a HEAD (no body).
    pub fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let reused = self.served > 0;
        let (mut resp, http10) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code.unwrap_or(0);
                    let resp = Response {
                        status,
                        reason: parsed.reason.unwrap_or("").to_string(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        reused_connection: reused,
                        ..Response::default()
                    };
                    let http10 = parsed.version == Some(0);
                    self.buf.drain(..n);
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    break (resp, http10);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > 64 * 1024 {
                        return Err(invalid("response head too large"));
                    }
                }
                Err(e) => return Err(invalid(format!("malformed response: {e}"))),
            }
            let before = self.buf.is_empty();
            match self.fill() {
                Ok(0) if before => {
                    self.nothing_read = true;
                    return Err(eof("connection closed before response"));
                }
                Ok(0) => return Err(eof("connection closed in response head")),
                Ok(_) => {}
                Err(e) => {
                    self.nothing_read = before
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::UnexpectedEof
                        );
                    return Err(e);
                }
            }
        };
        let mut close = http10
            && !resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"));
        if resp
            .header_all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        {
            close = true;
        }
        let no_body = head || resp.status == 204 || resp.status == 304;
        if no_body {
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            resp.chunked = true;
            loop {
                let line = self.take_line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    while !self.take_line()?.is_empty() {}
                    break;
                }
                let piece = self.take_exact(size)?;
                resp.body.extend_from_slice(&piece);
                if !self.take_line()?.is_empty() {
                    return Err(invalid("missing CRLF after chunk"));
                }
            }
        } else if let Some(len) = resp.content_length() {
            resp.body = self.take_exact(len as usize)?;
        } else {
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
            close = true;
        }
        self.served += 1;
        if close {
            self.disconnect();
        }
        Ok(resp)
    }
}

/// The value of an `Authorization: Basic` header for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One request to an absolute URL on a fresh connection (`ca_pem` for https).
pub fn fetch(
    url: &str,
    ca_pem: Option<&str>,
    method: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let u = Url::parse(url).ok_or_else(|| invalid(format!("bad url {url}")))?;
    let mut c = Client::from_url(url, ca_pem)?;
    c.request(method, &u.target, headers, None)
}

/// One request made by [`follow`].
#[derive(Clone, Debug)]
pub struct Hop {
    /// Method sent.
    pub method: String,
    /// Absolute URL requested.
    pub url: String,
    /// Status received.
    pub status: u16,
    /// `Location` received, as sent (redirects only).
    pub location: Option<String>,
    /// Whether `Authorization` was sent on this hop.
    pub sent_authorization: bool,
}

/// What [`follow`] ended with.
#[derive(Clone, Debug)]
pub struct Followed {
    /// The first response that was not a followed redirect.
    pub response: Response,
    /// Every request made, in order (the last one produced `response`).
    pub hops: Vec<Hop>,
}

impl Followed {
    /// The URL that produced [`Followed::response`].
    pub fn final_url(&self) -> &str {
        &self.hops.last().expect("at least one hop").url
    }
}

fn origin(u: &Url) -> (String, String, u16) {
    (u.scheme.clone(), u.host.to_ascii_lowercase(), u.port)
}

/// Sends `method` to `url` and follows redirects (301, 302, 303, 307, 308) at most
/// `max_redirects` times, each on a fresh connection, like a careful client: the method is
/// kept (HEAD stays HEAD; a 303 turns anything but HEAD into GET), `Location` is resolved per
/// RFC 3986 (relative paths and dot segments included), and an `Authorization` in `headers`
/// is sent only while the origin (scheme, host, port) is the first URL's. `ca_pem` may hold
/// several CAs ([`crate::ca_bundle_pem`]).
pub fn follow(
    url: &str,
    ca_pem: Option<&str>,
    method: &str,
    headers: &[(&str, &str)],
    max_redirects: usize,
) -> io::Result<Followed> {
    let first = Url::parse(url).ok_or_else(|| invalid(format!("bad url {url}")))?;
    let home = origin(&first);
    let mut current = first;
    let mut method = method.to_string();
    let mut hops = Vec::new();
    loop {
        let same_origin = origin(&current) == home;
        let sent: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| same_origin || !k.eq_ignore_ascii_case("authorization"))
            .copied()
            .collect();
        let url_text = format!(
            "{}://{}{}",
            current.scheme,
            current.authority(),
            current.target
        );
        let mut c = Client::from_url(&url_text, ca_pem)?;
        let resp = c.request(&method, &current.target, &sent, None)?;
        let location = resp.header("location").map(str::to_string);
        hops.push(Hop {
            method: method.clone(),
            url: url_text,
            status: resp.status,
            location: location.clone(),
            sent_authorization: sent
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization")),
        });
        let redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
        let Some(location) = location.filter(|_| redirect) else {
            return Ok(Followed {
                response: resp,
                hops,
            });
        };
        if hops.len() > max_redirects {
            return Err(invalid(format!("more than {max_redirects} redirects")));
        }
        current = current
            .join(&location)
            .ok_or_else(|| invalid(format!("bad Location {location}")))?;
        if resp.status == 303 && method != "HEAD" {
            method = "GET".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_header() {
        assert_eq!(
            basic_auth("alice", "wonderland"),
            "Basic YWxpY2U6d29uZGVybGFuZA=="
        );
    }
}
