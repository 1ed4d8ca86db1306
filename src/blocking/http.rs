//! A small blocking HTTP/1.1 client: one kept-alive connection to one
//! origin (plain or TLS), response heads read whole into a fixed buffer,
//! bodies streamed out of it (by length, chunked, or to the close). Used by
//! `ocirelay cache warm` and by the ACME thread; never on a worker.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::wire::http::{has_token, parse_content_length, ChunkedDecoder, RespFraming};
use crate::wire::url::{Origin, Scheme};

/// Token answers and error bodies are small JSON; more is not read.
pub const MAX_SMALL_BODY: usize = 64 * 1024;
/// Read buffer per connection; a response head must fit in it.
const BUF: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per read or write, not per request: a cold blob streams as the mirror
/// receives it, so only a silence this long is a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
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

/// A response head, owned (so that the connection is free for the body).
pub struct Head {
    pub status: u16,
    headers: Vec<(String, Vec<u8>)>,
    /// How its body ends.
    pub framing: RespFraming,
    /// The connection cannot carry another request after this response.
    close: bool,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// One connection and its read buffer.
struct Conn {
    stream: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Whether any byte arrived since the last request was sent (a failure
    /// before that on a kept-alive connection means the mirror had closed
    /// it: the request is sent again on a new one).
    heard: bool,
}

impl Conn {
    fn open(origin: &Origin, tls: &Arc<ClientConfig>) -> io::Result<Conn> {
        let mut last = None;
        let mut tcp = None;
        for addr in (origin.host.as_str(), origin.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
        })?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let stream = match origin.scheme {
            Scheme::Http => Stream::Plain(tcp),
            Scheme::Https => {
                let name = ServerName::try_from(origin.host.clone())
                    .map_err(|e| invalid(format!("{}: {e}", origin.host)))?;
                let conn = ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
                Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Conn {
            stream,
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            heard: false,
        })
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.heard = false;
        self.stream.write_all(request)?;
        self.stream.flush()
    }

    /// Reads more bytes after the unread ones; 0 at the end of the stream.
    fn read_more(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            return Err(invalid("response head larger than 64 KiB"));
        }
        let n = loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.end += n;
        self.heard |= n > 0;
        Ok(n)
    }

    /// Reads the answer's head; `bodiless` for a HEAD request, whose
    /// answer has no body whatever its headers say.
    fn read_head(&mut self, bodiless: bool) -> io::Result<Head> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut slots);
            match r.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap_or(0);
                    let http10 = r.version == Some(0);
                    let headers: Vec<_> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect();
                    self.start += n;
                    if (100..200).contains(&status) {
                        continue; // an interim answer; the real one follows
                    }
                    let mut head = head_of(status, http10, headers)?;
                    if bodiless {
                        head.framing = RespFraming::None;
                    }
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if self.read_more()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed before an answer",
                        ));
                    }
                }
                Err(e) => return Err(invalid(format!("bad response head: {e}"))),
            }
        }
    }

    /// Streams the body into `sink` until it ends (`Ok(true)`) or `sink`
    /// says stop (`Ok(false)`).
    fn body(
        &mut self,
        framing: RespFraming,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<bool> {
        let cut = |got: u64| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the connection closed after {got} bytes of the body"),
            )
        };
        match framing {
            RespFraming::None => Ok(true),
            RespFraming::Length(len) => {
                let mut left = len;
                while left > 0 {
                    if self.start == self.end && self.read_more()? == 0 {
                        return Err(cut(len - left));
                    }
                    let n =
                        (self.end - self.start).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let more = sink(&self.buf[self.start..self.start + n]);
                    self.start += n;
                    left -= n as u64;
                    if !more {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            RespFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let (mut stopped, mut got) = (false, 0u64);
                loop {
                    if self.start < self.end {
                        let used = decoder
                            .feed(&self.buf[self.start..self.end], |data| {
                                if !stopped {
                                    got += data.len() as u64;
                                    stopped = !sink(data);
                                }
                            })
                            .map_err(|e| invalid(format!("chunked body: {e}")))?;
                        self.start += used;
                        if stopped {
                            return Ok(false);
                        }
                        if decoder.is_done() {
                            return Ok(true);
                        }
                    }
                    if self.read_more()? == 0 {
                        return Err(cut(got));
                    }
                }
            }
            RespFraming::Close => loop {
                if self.start < self.end {
                    let more = sink(&self.buf[self.start..self.end]);
                    self.start = self.end;
                    if !more {
                        return Ok(false);
                    }
                }
                match self.read_more() {
                    Ok(0) => return Ok(true),
                    // A TLS peer that ends without close_notify: the digest
                    // check still catches a cut body.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            },
        }
    }
}

fn head_of(status: u16, http10: bool, headers: Vec<(String, Vec<u8>)>) -> io::Result<Head> {
    let mut head = Head {
        status,
        headers,
        framing: RespFraming::Close,
        close: false,
    };
    head.framing = if status == 204 || status == 304 {
        RespFraming::None
    } else if let Some(te) = head.header("transfer-encoding") {
        if has_token(te, "chunked") {
            RespFraming::Chunked
        } else {
            RespFraming::Close
        }
    } else if let Some(cl) = head.header("content-length") {
        RespFraming::Length(parse_content_length(cl).ok_or_else(|| invalid("bad Content-Length"))?)
    } else {
        RespFraming::Close
    };
    let connection = head.header("connection").unwrap_or_default();
    head.close = head.framing == RespFraming::Close
        || has_token(connection, "close")
        || (http10 && !has_token(connection, "keep-alive"));
    Ok(head)
}

/// Requests to one origin over one kept-alive connection. Each request is
/// followed by one of `body`, `small_body` or `skip`.
pub struct Client {
    origin: Origin,
    tls: Arc<ClientConfig>,
    conn: Option<Conn>,
    /// The last head's body has not been read: the connection cannot be
    /// used again.
    unread: Option<Head>,
}

impl Client {
    pub fn new(origin: Origin, tls: Arc<ClientConfig>) -> Client {
        Client {
            origin,
            tls,
            conn: None,
            unread: None,
        }
    }

    /// The origin this client talks to.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.origin, &self.tls)?);
        }
        Ok(())
    }

    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> io::Result<Head> {
        self.request("GET", target, headers, b"")
    }

    /// `method target` with `headers` and `body` (a `Content-Length` is
    /// added when there is a body). A kept-alive connection that fails
    /// before any answer is heard is replaced and the request sent once
    /// more: the server never saw it (ACME's POSTs carry a one-time nonce,
    /// so a repeat the server did see fails as `badNonce`, never twice).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Head> {
        if self.unread.take().is_some() {
            self.conn = None;
        }
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ocirelay/{}\r\n",
            self.origin.authority(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        let bodiless = method == "HEAD";
        let reused = self.conn.is_some();
        let head = match self.exchange(&req, bodiless) {
            Err((_, false)) if reused => self.exchange(&req, bodiless),
            r => r,
        }
        .map_err(|(e, _)| e)?;
        Ok(head)
    }

    /// One request and its head; on failure, whether any answer was heard.
    fn exchange(&mut self, req: &[u8], bodiless: bool) -> Result<Head, (io::Error, bool)> {
        self.connect().map_err(|e| (e, false))?;
        let conn = self.conn.as_mut().expect("connected above");
        match conn.send(req).and_then(|()| conn.read_head(bodiless)) {
            Ok(head) => Ok(head),
            Err(e) => {
                let heard = conn.heard;
                self.conn = None;
                Err((e, heard))
            }
        }
    }

    /// The body of `head` into `sink` (see [`Conn::body`]).
    pub fn body(&mut self, head: &Head, sink: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
        let conn = self.conn.as_mut().ok_or_else(|| invalid("no connection"))?;
        let r = conn.body(head.framing, sink);
        if !matches!(r, Ok(true)) || head.close {
            self.conn = None;
        }
        r
    }

    /// A body of at most `cap` bytes (the rest is not read: the connection
    /// is dropped instead).
    pub fn small_body(&mut self, head: &Head, cap: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.body(head, &mut |d| {
            let room = cap - out.len();
            out.extend_from_slice(&d[..d.len().min(room)]);
            d.len() <= room
        })?;
        Ok(out)
    }

    /// Reads past a body not needed (small ones; others close the
    /// connection).
    pub fn skip(&mut self, head: &Head) {
        let _ = self.small_body(head, MAX_SMALL_BODY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::url::Url;

    /// A server that answers each request on one connection with the next
    /// of `answers`, byte for byte.
    fn serve(answers: Vec<&'static [u8]>) -> Origin {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            for a in answers {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                    req.push(b[0]);
                }
                s.write_all(a).unwrap();
            }
        });
        Url::parse(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .origin
    }

    #[test]
    fn chunked_and_sized_bodies_stream_through_one_kept_alive_connection() {
        let origin = serve(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
        ]);
        let mut c = Client::new(origin, crate::tls::config::client_config(&[]).unwrap());
        let head = c.get("/a", &[]).unwrap();
        assert_eq!((head.status, head.framing), (200, RespFraming::Chunked));
        let mut parts = Vec::new();
        assert!(c
            .body(&head, &mut |d| {
                parts.push(d.to_vec());
                true
            })
            .unwrap());
        assert_eq!(parts.concat(), b"hello");
        // The same connection (the server accepts only one).
        let head = c.get("/b", &[]).unwrap();
        assert_eq!((head.status, head.framing), (404, RespFraming::Length(5)));
        assert_eq!(c.small_body(&head, 3).unwrap(), b"nop");
    }

    #[test]
    fn a_head_answer_has_no_body_and_a_post_carries_its_body_with_its_length() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            // HEAD: its answer declares a length it does not send.
            while !got.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                got.push(b[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nReplay-Nonce: n1\r\n\r\n")
                .unwrap();
            let mut post = Vec::new();
            while !post.ends_with(b"{\"a\":1}") && s.read(&mut b).unwrap() == 1 {
                post.push(b[0]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            (
                String::from_utf8(got).unwrap(),
                String::from_utf8(post).unwrap(),
            )
        });
        let origin = Url::parse(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .origin;
        let mut c = Client::new(origin, crate::tls::config::client_config(&[]).unwrap());
        let head = c.request("HEAD", "/nonce", &[], b"").unwrap();
        assert_eq!((head.status, head.framing), (200, RespFraming::None));
        assert_eq!(head.header_str("replay-nonce"), Some("n1"));
        assert!(c.body(&head, &mut |_| true).unwrap());
        let head = c
            .request(
                "POST",
                "/x",
                &[("Content-Type", "application/jose+json")],
                b"{\"a\":1}",
            )
            .unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(c.small_body(&head, 10).unwrap(), b"ok");
        let (head_req, post) = seen.join().unwrap();
        assert!(
            head_req.starts_with("HEAD /nonce HTTP/1.1\r\n"),
            "{head_req}"
        );
        assert!(post.starts_with("POST /x HTTP/1.1\r\n"), "{post}");
        assert!(post.contains("\r\nContent-Length: 7\r\n"), "{post}");
        assert!(post.ends_with("\r\n\r\n{\"a\":1}"), "{post}");
    }
}
