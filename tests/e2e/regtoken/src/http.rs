//! A deliberately small HTTP/1.1 server: one thread per connection, keep-alive,
//! Content-Length bodies only. Enough for a token endpoint driven by real clients.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names are lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut r = Response::new(status);
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r.body = serde_json::to_vec(v).expect("json");
        r.body.push(b'\n');
        r
    }

    pub fn text(status: u16, s: &str) -> Self {
        let mut r = Response::new(status);
        r.headers
            .push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
        r.body = s.as_bytes().to_vec();
        r
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Status",
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request. `buf` keeps bytes that belong to the next request.
/// Returns Ok(None) on a clean close between requests.
pub fn read_request<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut tmp = [0u8; 8192];
    let head_len = loop {
        if let Some(n) = find_head_end(buf) {
            break n;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let n = r.read(&mut tmp)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(bad("connection closed inside a request head"));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| bad("non-utf8 head"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default().to_string();
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(bad("bad request line"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (n, v) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut req = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
        close: version == "HTTP/1.0",
    };
    if let Some(c) = req.header("connection") {
        if c.eq_ignore_ascii_case("close") {
            req.close = true;
        }
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
    {
        return Err(bad("chunked request bodies are not supported"));
    }
    let body_len: usize = match req.header("content-length") {
        Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
        None => 0,
    };
    if body_len > MAX_BODY {
        return Err(bad("body too large"));
    }
    buf.drain(..head_len);
    while buf.len() < body_len {
        let n = r.read(&mut tmp)?;
        if n == 0 {
            return Err(bad("connection closed inside a request body"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    req.body = buf.drain(..body_len).collect();
    Ok(Some(req))
}

pub fn write_response<W: Write>(
    w: &mut W,
    resp: &Response,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    w.write_all(&bytes)?;
    w.flush()
}

pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

fn serve_stream<S: Read + Write>(s: &mut S, handler: &Handler) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let req = match read_request(s, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = write_response(s, &Response::text(400, "bad request\n"), false, true);
                }
                return Err(e);
            }
        };
        let resp = handler(&req);
        write_response(s, &resp, req.method == "HEAD", req.close)?;
        if req.close {
            return Ok(());
        }
    }
}

fn prepare(tcp: &TcpStream) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = tcp.set_nodelay(true);
}

/// Serves plain HTTP forever.
pub fn serve_plain(listener: TcpListener, handler: Arc<Handler>) {
    for conn in listener.incoming() {
        let Ok(mut tcp) = conn else { continue };
        let handler = handler.clone();
        thread::spawn(move || {
            prepare(&tcp);
            let _ = serve_stream(&mut tcp, &*handler);
        });
    }
}

/// Serves HTTPS forever.
pub fn serve_tls(listener: TcpListener, cfg: Arc<rustls::ServerConfig>, handler: Arc<Handler>) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let handler = handler.clone();
        let cfg = cfg.clone();
        thread::spawn(move || {
            prepare(&tcp);
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            if let Err(e) = serve_stream(&mut tls, &*handler) {
                if e.kind() != io::ErrorKind::UnexpectedEof
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    eprintln!("regtoken: tls connection: {e}");
                }
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes application/x-www-form-urlencoded text ('+' is a space).
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=b&c=d` (query strings and form bodies), keeping repeats in order.
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        assert_eq!(form_decode("a+b%3Ac%2f"), "a b:c/");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%4"), "%4");
        let p = parse_pairs("scope=repository%3Alibrary%2Fx%3Apull&scope=b&service=s");
        assert_eq!(p[0].1, "repository:library/x:pull");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn reads_pipelined_requests() {
        let raw = b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut r = &raw[..];
        let mut buf = Vec::new();
        let a = read_request(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(a.body, b"abc");
        assert_eq!(a.header("host"), Some("x"));
        let b = read_request(&mut r, &mut buf).unwrap().unwrap();
        assert_eq!(
            (b.path.as_str(), b.query.as_str(), b.close),
            ("/b", "x=1", true)
        );
        assert!(read_request(&mut r, &mut buf).unwrap().is_none());
    }
}
