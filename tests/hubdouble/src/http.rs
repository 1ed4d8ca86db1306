//! Server-side HTTP/1.1: reading requests (keep-alive, pipelining, Content-Length and chunked
//! bodies) and writing responses (fixed-length, chunked, or zero-copy slices of a blob).

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub http10: bool,
    pub peer: IpAddr,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `application/x-www-form-urlencoded` / query text (`+` is a space).
pub(crate) fn url_decode(s: &str) -> String {
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

/// Parses `a=1&b=2` into decoded pairs, keeping repeats and order.
pub(crate) fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    pub fn query_params(&self) -> Vec<(String, String)> {
        parse_form(self.query())
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether the client asked to close after this exchange.
    pub fn wants_close(&self) -> bool {
        let conn = self
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase());
        let mut close = self.http10;
        for t in conn {
            if t == "close" {
                close = true;
            } else if t == "keep-alive" && self.http10 {
                close = false;
            }
        }
        close
    }
}

/// A buffered request reader for one connection; leftover bytes stay for the next request.
pub(crate) struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Reads more bytes; false at EOF.
    fn fill<S: Read>(&mut self, s: &mut S) -> io::Result<bool> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        loop {
            match s.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads one request. `Ok(None)`: the peer closed cleanly between requests.
    /// `InvalidData` errors mean the request was malformed (answer 400 and close).
    /// Answers `Expect: 100-continue` before reading a body.
    pub fn read_request<S: Read + Write>(
        &mut self,
        s: &mut S,
        peer: IpAddr,
    ) -> io::Result<Option<Request>> {
        let (mut req, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(self.pending()) {
                Ok(httparse::Status::Complete(n)) => {
                    let req = Request {
                        method: parsed.method.unwrap_or("").to_string(),
                        target: parsed.path.unwrap_or("").to_string(),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                        http10: parsed.version == Some(0),
                        peer,
                    };
                    break (req, n);
                }
                Ok(httparse::Status::Partial) => {
                    if self.end - self.start > MAX_HEAD {
                        return Err(bad("request head too large"));
                    }
                }
                Err(e) => return Err(bad(&format!("malformed request: {e}"))),
            }
            let had = self.end > self.start;
            if !self.fill(s)? {
                return if had {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"))
                } else {
                    Ok(None)
                };
            }
        };
        self.start += head_len;
        let expects = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects && self.start == self.end {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            s.flush()?;
        }
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            req.body = self.read_chunked(s)?;
        } else if let Some(len) = req.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| bad("bad content-length"))?;
            if len > MAX_BODY {
                return Err(bad("body too large"));
            }
            req.body = self.read_exact(s, len)?;
        }
        Ok(Some(req))
    }

    fn read_exact<S: Read>(&mut self, s: &mut S, len: usize) -> io::Result<Vec<u8>> {
        while self.end - self.start < len {
            if !self.fill(s)? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
            }
        }
        let out = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(out)
    }

    fn read_line<S: Read>(&mut self, s: &mut S) -> io::Result<String> {
        loop {
            if let Some(i) = self.pending().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending()[..i]).into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            if self.end - self.start > MAX_HEAD {
                return Err(bad("line too long"));
            }
            if !self.fill(s)? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
            }
        }
    }

    fn read_chunked<S: Read>(&mut self, s: &mut S) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(s)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                while !self.read_line(s)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            body.extend(self.read_exact(s, size)?);
            if !self.read_line(s)?.is_empty() {
                return Err(bad("missing CRLF after chunk"));
            }
        }
    }
}

/// A response body.
pub(crate) enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, in small chunks.
    Chunked(Vec<u8>),
    /// `data[start..end]`, written straight from the shared blob.
    Blob {
        data: Arc<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) | Body::Chunked(b) => b.len(),
            Body::Blob { start, end, .. } => end - start,
        }
    }
}

/// A response to write.
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Send the head only (HEAD requests); `Content-Length` still describes the full body.
    pub head_only: bool,
    /// Close the connection after this response.
    pub close: bool,
    /// A blob body that the cut fault may truncate.
    pub cuttable: bool,
    /// With `head_only`: send no `Content-Length` (gcr.io-like manifest HEADs).
    pub omit_length: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::with_capacity(8),
            body: Body::Empty,
            head_only: false,
            close: false,
            cuttable: false,
            omit_length: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// What happened while writing.
pub(crate) enum Written {
    /// Fully written; the connection may continue.
    Done,
    /// The body was cut on purpose; close the connection.
    Cut,
}

/// Writes `resp`; `cut` stops a blob body after that many bytes.
pub(crate) fn write_response<S: Write>(
    s: &mut S,
    resp: &Response,
    head: &mut Vec<u8>,
    date: &str,
    cut: Option<u64>,
) -> io::Result<Written> {
    head.clear();
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(head, "Date: {date}\r\n");
    let chunked = matches!(resp.body, Body::Chunked(_));
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if !(resp.head_only && resp.omit_length) {
        let _ = write!(head, "Content-Length: {}\r\n", resp.body.len());
    }
    if resp.close {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if resp.head_only {
        s.write_all(head)?;
        s.flush()?;
        return Ok(Written::Done);
    }
    match &resp.body {
        Body::Empty => s.write_all(head)?,
        Body::Bytes(b) => {
            head.extend_from_slice(b);
            s.write_all(head)?;
        }
        Body::Chunked(b) => {
            // Several chunks, each flushed on its own, so readers see chunk boundaries
            // that do not line up with their reads.
            s.write_all(head)?;
            for piece in b.chunks(24) {
                let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                c.extend_from_slice(piece);
                c.extend_from_slice(b"\r\n");
                s.write_all(&c)?;
                s.flush()?;
            }
            s.write_all(b"0\r\n\r\n")?;
        }
        Body::Blob { data, start, end } => {
            s.write_all(head)?;
            let slice = &data[*start..*end];
            if let Some(limit) = cut {
                let n = slice.len().min(limit as usize);
                s.write_all(&slice[..n])?;
                s.flush()?;
                return Ok(Written::Cut);
            }
            for piece in slice.chunks(4 << 20) {
                s.write_all(piece)?;
            }
        }
    }
    s.flush()?;
    Ok(Written::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    /// Reads from a slice, collects writes.
    struct Duplex<'a>(&'a [u8], Vec<u8>);

    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pipelined_and_chunked_requests() {
        let raw = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nPOST /u HTTP/1.0\r\nContent-Length: 3\r\n\r\nxyz";
        let mut src = Duplex(&raw[..], Vec::new());
        let mut r = Reader::new();
        let a = r.read_request(&mut src, peer()).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path(), a.query()),
            ("GET", "/a", "x=1")
        );
        assert!(!a.wants_close());
        let b = r.read_request(&mut src, peer()).unwrap().unwrap();
        assert_eq!(b.body, b"abcde");
        let c = r.read_request(&mut src, peer()).unwrap().unwrap();
        assert_eq!(c.body, b"xyz");
        assert!(c.wants_close());
        assert!(r.read_request(&mut src, peer()).unwrap().is_none());
    }

    #[test]
    fn decodes_forms() {
        assert_eq!(
            parse_form("scope=repository%3Alibrary%2Falpine%3Apull&a=b+c&scope=x&z"),
            vec![
                ("scope".into(), "repository:library/alpine:pull".into()),
                ("a".into(), "b c".into()),
                ("scope".into(), "x".into()),
                ("z".into(), String::new())
            ]
        );
        assert_eq!(url_decode("%zz%4"), "%zz%4");
    }
}
