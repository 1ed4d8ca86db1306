//! `ocirelay cache warm IMAGE...`: pulls images through a running mirror,
//! as docker would, so that the mirror's cache holds them before anyone
//! asks (every platform of a multi-platform image).
//!
//! It goes through the mirror, never into the cache directory, because the
//! mirror is the one process that owns the directory and learns from each
//! pull: which repositories link which blobs, which are anonymously
//! pullable, what a tag points at. Writing files beside it would skip all
//! of that.
//!
//! A blocking `std::net` client: an operator's tool, not the data path.
//! Every body is checked against its digest here too (the mirror already
//! checks; this makes the report honest), streamed through a fixed buffer,
//! never held whole, except manifests (at most 4 MiB, the mirror's limit).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde::Deserialize;

use super::manifests::MAX_MANIFEST;
use crate::wire::challenge::{bearer_realm, parse_challenge, percent_encode};
use crate::wire::digest::{sha256_digest, Verifier};
use crate::wire::http::{has_token, parse_content_length, ChunkedDecoder};
use crate::wire::names::{Digest, RepoName, Tag};
use crate::wire::oci::FULL_ACCEPT;
use crate::wire::url::{Origin, Scheme, Url};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Blobs fetched at once per image: enough to overlap the mirror's upstream
/// round trips, few enough not to look like a flood to the upstream.
const PARALLEL: usize = 4;
/// An index inside an index is allowed once more; deeper is not an image.
const MAX_DEPTH: usize = 2;
/// Token answers and error bodies are small JSON; more is not read.
const MAX_SMALL_BODY: usize = 64 * 1024;
/// Read buffer per connection; a response head must fit in it.
const BUF: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per read or write, not per request: a cold blob streams as the mirror
/// receives it, so only a silence this long is a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// What the command was given.
pub struct Options {
    /// The mirror, `http(s)://host:port`.
    pub mirror: Url,
    /// Extra CA certificates (PEM) to trust for `https://`, besides the web
    /// PKI roots (the same trust as the mirror's upstream connections).
    pub ca_file: Option<PathBuf>,
    /// `USER:PASSWORD` for the mirror's token endpoint (private images).
    pub user: Option<String>,
}

/// What went wrong, with what it happened to.
#[derive(Debug)]
pub enum WarmError {
    /// IMAGE is not a reference docker would accept.
    Reference { image: String, reason: String },
    /// No usable mirror address (from `--mirror` or the config).
    Mirror(String),
    /// Nothing answered at the mirror's address.
    Unreachable { mirror: String, source: io::Error },
    /// The CA file could not be used.
    Tls(String),
    /// The connection failed while fetching `object`.
    Io { object: String, source: io::Error },
    /// The mirror answered `status` for `object`; `detail` is the OCI error
    /// code and message, when it sent one.
    Status {
        object: String,
        status: u16,
        detail: String,
    },
    /// The bytes of `object` do not match its digest or announced size.
    Mismatch { object: String, what: String },
    /// `object` is not a manifest this command can follow.
    Manifest { object: String, reason: String },
    /// The token endpoint the mirror's challenge named did not give a token.
    Token { realm: String, reason: String },
}

impl fmt::Display for WarmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarmError::Reference { image, reason } => {
                write!(f, "{image:?} is not an image reference: {reason}")
            }
            WarmError::Mirror(why) => f.write_str(why),
            WarmError::Unreachable { mirror, source } => write!(
                f,
                "no mirror answers at {mirror} ({source}); is ocirelay running there? \
                 Name it with --mirror http://HOST:PORT"
            ),
            WarmError::Tls(why) => write!(f, "TLS: {why}"),
            WarmError::Io { object, source } => write!(f, "{object}: {source}"),
            WarmError::Status {
                object,
                status,
                detail,
            } => {
                write!(f, "{object}: the mirror answered {status}")?;
                if !detail.is_empty() {
                    write!(f, " {detail}")?;
                }
                if *status == 401 {
                    f.write_str(" (private? give credentials with --user or OCIRELAY_WARM_AUTH)")?;
                }
                Ok(())
            }
            WarmError::Mismatch { object, what } => write!(f, "{object}: {what}"),
            WarmError::Manifest { object, reason } => write!(f, "{object}: {reason}"),
            WarmError::Token { realm, reason } => write!(f, "token from {realm}: {reason}"),
        }
    }
}

impl std::error::Error for WarmError {}

// ---- image references ----

/// An image as docker names it, resolved to what the mirror is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host as written (lowercased; `index.docker.io` is
    /// `docker.io`); `None`: the mirror's default registry.
    pub registry: Option<String>,
    /// The repository (`library/alpine`).
    pub repo: String,
    /// Tag or digest (`latest` when none was given).
    pub reference: String,
}

impl ImageRef {
    /// Parses `[registry/]repo[:tag][@digest]` by docker's rules: the first
    /// component names a registry when it has a `.` or `:` or is
    /// `localhost`; Docker Hub files one-component names under `library/`;
    /// with both a tag and a digest, the digest is what is pulled.
    pub fn parse(image: &str) -> Result<ImageRef, WarmError> {
        let bad = |reason: &str| WarmError::Reference {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        let (name_tag, digest) = match image.split_once('@') {
            Some((n, d)) => {
                Digest::parse(d).map_err(|_| {
                    bad("the part after @ is not a digest (sha256:<64 hex digits>)")
                })?;
                (n, Some(d))
            }
            None => (image, None),
        };
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if last_slash.is_none_or(|s| i > s) => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            Tag::parse(t).map_err(|_| bad("invalid tag (letters, digits, _ . -; at most 128)"))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_ascii_lowercase()), rest)
            }
            _ => (None, name),
        };
        if let Some(r) = &registry {
            if !valid_host_port(r) {
                return Err(bad("invalid registry host"));
            }
        }
        let registry = registry.map(|r| {
            if r == "index.docker.io" {
                "docker.io".into()
            } else {
                r
            }
        });
        let hub = registry.as_deref().is_none_or(|r| r == "docker.io");
        let repo = if hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let name_rule = "invalid repository name (lowercase letters, digits, separators . _ __ -, components joined by /)";
        RepoName::parse(&repo).map_err(|_| bad(name_rule))?;
        // The mirror must take `<registry>/<repo>` as one name too.
        if let Some(r) = registry.as_deref().filter(|r| !r.contains(':')) {
            RepoName::parse(&format!("{r}/{repo}")).map_err(|_| bad(name_rule))?;
        }
        Ok(ImageRef {
            registry,
            repo,
            reference: digest.or(tag).unwrap_or("latest").to_string(),
        })
    }

    /// `/v2/<name>/<kind>/<reference>`: the registry, when one was named,
    /// as a path prefix (the mirror's path routing), or, for a host with a
    /// port (a `:` cannot be part of a repository name), as containerd's
    /// `?ns=`.
    fn path(&self, kind: &str, reference: &str) -> String {
        match self.registry.as_deref() {
            None => format!("/v2/{}/{kind}/{reference}", self.repo),
            Some(r) if r.contains(':') => {
                let mut p = format!("/v2/{}/{kind}/{reference}?ns=", self.repo);
                percent_encode(r, &mut p);
                p
            }
            Some(r) => format!("/v2/{r}/{}/{kind}/{reference}", self.repo),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        let registry = self.registry.as_deref().unwrap_or("docker.io");
        write!(f, "{registry}/{}{sep}{}", self.repo, self.reference)
    }
}

/// `host[:port]` with a DNS name or IPv4 address.
fn valid_host_port(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

// ---- the mirror's address ----

/// `--mirror URL`: `http(s)://host[:port]`, nothing after it.
pub fn parse_mirror(s: &str) -> Result<Url, WarmError> {
    let url = Url::parse(s).map_err(|e| WarmError::Mirror(format!("--mirror {s:?}: {e}")))?;
    if url.path_and_query != "/" {
        return Err(WarmError::Mirror(format!(
            "--mirror {s:?}: give only scheme, host and port (http://HOST:PORT)"
        )));
    }
    Ok(url)
}

/// The default mirror: `http://` + the first plain listen address, with an
/// unspecified address (`0.0.0.0`, `[::]`) meaning this machine's loopback.
pub fn default_mirror(listen: &[SocketAddr]) -> Result<Url, WarmError> {
    let Some(first) = listen.first() else {
        return Err(WarmError::Mirror(
            "the config has no plain `listen` address: name the mirror with --mirror URL".into(),
        ));
    };
    if first.port() == 0 {
        return Err(WarmError::Mirror(format!(
            "the config listens on {first} (any free port): name the mirror with --mirror URL"
        )));
    }
    let ip = match first.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    parse_mirror(&format!("http://{}", SocketAddr::new(ip, first.port())))
}

// ---- a small blocking HTTP/1.1 client ----

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

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

/// A response head, owned (so that the connection is free for the body).
struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    framing: Framing,
    /// The connection cannot carry another request after this response.
    close: bool,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn header_str(&self, name: &str) -> Option<&str> {
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

    fn read_head(&mut self) -> io::Result<Head> {
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
                    return head_of(status, http10, headers);
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
    fn body(&mut self, framing: Framing, sink: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
        let cut = |got: u64| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the connection closed after {got} bytes of the body"),
            )
        };
        match framing {
            Framing::Empty => Ok(true),
            Framing::Length(len) => {
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
            Framing::Chunked => {
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
            Framing::Close => loop {
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
        framing: Framing::Close,
        close: false,
    };
    head.framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(te) = head.header("transfer-encoding") {
        if has_token(te, "chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(cl) = head.header("content-length") {
        Framing::Length(parse_content_length(cl).ok_or_else(|| invalid("bad Content-Length"))?)
    } else {
        Framing::Close
    };
    let connection = head.header("connection").unwrap_or_default();
    head.close = head.framing == Framing::Close
        || has_token(connection, "close")
        || (http10 && !has_token(connection, "keep-alive"));
    Ok(head)
}

/// Requests to one origin over one kept-alive connection. Each `get` is
/// followed by one of `body`, `small_body` or `skip`.
struct Client {
    origin: Origin,
    tls: Arc<ClientConfig>,
    conn: Option<Conn>,
    /// The last head's body has not been read: the connection cannot be
    /// used again.
    unread: Option<Head>,
}

impl Client {
    fn new(origin: Origin, tls: Arc<ClientConfig>) -> Client {
        Client {
            origin,
            tls,
            conn: None,
            unread: None,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.origin, &self.tls)?);
        }
        Ok(())
    }

    fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> io::Result<Head> {
        if self.unread.take().is_some() {
            self.conn = None;
        }
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ocirelay-warm/{}\r\n",
            self.origin.authority(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        let reused = self.conn.is_some();
        let head = match self.exchange(req.as_bytes()) {
            // A kept-alive connection the mirror had closed: once more on a
            // new one (a GET is safe to repeat).
            Err((_, false)) if reused => self.exchange(req.as_bytes()),
            r => r,
        }
        .map_err(|(e, _)| e)?;
        Ok(head)
    }

    /// One request and its head; on failure, whether any answer was heard.
    fn exchange(&mut self, req: &[u8]) -> Result<Head, (io::Error, bool)> {
        self.connect().map_err(|e| (e, false))?;
        let conn = self.conn.as_mut().expect("connected above");
        match conn.send(req).and_then(|()| conn.read_head()) {
            Ok(head) => Ok(head),
            Err(e) => {
                let heard = conn.heard;
                self.conn = None;
                Err((e, heard))
            }
        }
    }

    /// The body of `head` into `sink` (see [`Conn::body`]).
    fn body(&mut self, head: &Head, sink: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
        let conn = self.conn.as_mut().ok_or_else(|| invalid("no connection"))?;
        let r = conn.body(head.framing, sink);
        if !matches!(r, Ok(true)) || head.close {
            self.conn = None;
        }
        r
    }

    /// A body of at most `cap` bytes (the rest is not read: the connection
    /// is dropped instead).
    fn small_body(&mut self, head: &Head, cap: usize) -> io::Result<Vec<u8>> {
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
    fn skip(&mut self, head: &Head) {
        let _ = self.small_body(head, MAX_SMALL_BODY);
    }
}

// ---- manifests ----

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: Option<u64>,
}

impl Descriptor {
    /// Layers a registry may not distribute (Windows base layers): clients
    /// fetch them from their `urls`, never from a registry or mirror.
    fn foreign(&self) -> bool {
        self.media_type
            .starts_with("application/vnd.docker.image.rootfs.foreign.")
            || self
                .media_type
                .starts_with("application/vnd.oci.image.layer.nondistributable.")
    }
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What a manifest leads to.
enum Walk {
    /// An index: its platform manifests.
    Index(Vec<Descriptor>),
    /// An image: its config, then its layers.
    Image(Vec<Descriptor>),
}

fn walk(content_type: Option<&str>, bytes: &[u8]) -> Result<Walk, String> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    let media_type = doc
        .media_type
        .as_deref()
        .or(content_type)
        .map(|t| t.split(';').next().unwrap_or(t).trim());
    let is_index = matches!(media_type, Some(OCI_INDEX | DOCKER_LIST))
        || (doc.manifests.is_some() && doc.config.is_none());
    if is_index {
        return Ok(Walk::Index(doc.manifests.unwrap_or_default()));
    }
    match doc.config {
        Some(config) => Ok(Walk::Image(
            std::iter::once(config).chain(doc.layers).collect(),
        )),
        None => Err(format!(
            "neither an index nor an image manifest (type {})",
            media_type.unwrap_or("unknown")
        )),
    }
}

/// The OCI error body's first code and message, if the body is one.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(Deserialize)]
    struct OciError {
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Errors>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| format!("{} ({})", e.code, e.message))
        .unwrap_or_default()
}

// ---- warming ----

/// What one image came to.
#[derive(Debug)]
pub struct ImageReport {
    pub image: String,
    pub manifests: usize,
    pub blobs: usize,
    /// Blob bytes fetched and verified.
    pub bytes: u64,
    /// Foreign (non-distributable) layers passed over.
    pub skipped: usize,
    pub failures: Vec<WarmError>,
}

impl ImageReport {
    /// `docker.io/library/alpine:3.19: 1 manifest, 3 blobs (3.4 MiB), 0 failed`
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {}, {} ({}), {} failed",
            self.image,
            plural(self.manifests, "manifest"),
            plural(self.blobs, "blob"),
            human_size(self.bytes),
            self.failures.len()
        );
        if self.skipped > 0 {
            s.push_str(&format!(", {} skipped (foreign)", self.skipped));
        }
        s
    }
}

/// The whole command's outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    /// Images whose every object was fetched and verified.
    pub complete: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub failed: usize,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "warmed {} of {}: {}, {} ({}), {} failed",
            self.complete,
            plural(self.images, "image"),
            plural(self.manifests, "manifest"),
            plural(self.blobs, "blob"),
            human_size(self.bytes),
            self.failed
        )
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// `512 B`, `12.3 MiB`.
pub fn human_size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Warms `images` through the mirror, calling `each` as each one is done.
/// `Err` only for what stops everything before the first request: a bad
/// reference (nothing is fetched until all are valid), an unusable CA file,
/// a mirror that does not answer.
pub fn run(
    opts: &Options,
    images: &[String],
    mut each: impl FnMut(&ImageReport),
) -> Result<Summary, WarmError> {
    let refs = images
        .iter()
        .map(|i| ImageRef::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let extra = match &opts.ca_file {
        Some(p) => crate::tls::config::load_certs(p).map_err(WarmError::Tls)?,
        None => Vec::new(),
    };
    let tls = crate::tls::config::client_config(&extra).map_err(WarmError::Tls)?;
    let warmer = Warmer {
        origin: opts.mirror.origin.clone(),
        tls,
        basic: opts.user.as_deref().map(basic_auth),
    };
    let mut client = warmer.client();
    client.connect().map_err(|source| WarmError::Unreachable {
        mirror: opts.mirror.origin.to_string(),
        source,
    })?;
    let mut sum = Summary::default();
    for r in &refs {
        let report = warmer.image(&mut client, r);
        sum.images += 1;
        sum.complete += usize::from(report.failures.is_empty());
        sum.manifests += report.manifests;
        sum.blobs += report.blobs;
        sum.bytes += report.bytes;
        sum.failed += report.failures.len();
        each(&report);
    }
    Ok(sum)
}

struct Warmer {
    origin: Origin,
    tls: Arc<ClientConfig>,
    /// `Basic <base64>` for the token endpoint.
    basic: Option<String>,
}

/// A blob still to fetch.
struct Blob {
    digest: String,
    size: Option<u64>,
}

impl Warmer {
    fn client(&self) -> Client {
        Client::new(self.origin.clone(), self.tls.clone())
    }

    /// One image: its manifests, breadth first, then its blobs.
    fn image(&self, client: &mut Client, img: &ImageRef) -> ImageReport {
        let mut report = ImageReport {
            image: img.to_string(),
            manifests: 0,
            blobs: 0,
            bytes: 0,
            skipped: 0,
            failures: Vec::new(),
        };
        // One token per image (its scope is the repository), shared by the
        // blob threads and replaced when the mirror challenges again.
        let token = Mutex::new(None);
        // Within one image only: the mirror learns per repository which
        // blobs it may serve, so a blob shared with another image's
        // repository is fetched through that one too.
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        let mut queue = VecDeque::from([(img.reference.clone(), 0)]);
        while let Some((reference, depth)) = queue.pop_front() {
            let object = format!("manifest {reference}");
            let found = self.manifest(client, img, &reference, &token);
            let (content_type, bytes) = match found {
                Ok(m) => m,
                Err(e) => {
                    report.failures.push(e);
                    continue;
                }
            };
            report.manifests += 1;
            let children = match walk(content_type.as_deref(), &bytes) {
                Ok(w) => w,
                Err(reason) => {
                    report.failures.push(WarmError::Manifest { object, reason });
                    continue;
                }
            };
            let (descriptors, is_index) = match children {
                Walk::Index(_) if depth >= MAX_DEPTH => {
                    report.failures.push(WarmError::Manifest {
                        object,
                        reason: "indexes nested too deep".into(),
                    });
                    continue;
                }
                Walk::Index(ds) => (ds, true),
                Walk::Image(ds) => (ds, false),
            };
            for d in descriptors {
                if Digest::parse(&d.digest).is_err() {
                    report.failures.push(WarmError::Manifest {
                        object: object.clone(),
                        reason: format!("names an invalid digest {:?}", d.digest),
                    });
                } else if !seen.insert(d.digest.clone()) {
                    // Named twice (a layer repeated, a platform listed
                    // twice): fetched once.
                } else if is_index {
                    queue.push_back((d.digest, depth + 1));
                } else if d.foreign() {
                    report.skipped += 1;
                } else {
                    blobs.push(Blob {
                        digest: d.digest,
                        size: d.size,
                    });
                }
            }
        }
        for r in self.blobs(client, img, &blobs, &token) {
            match r {
                Ok(n) => {
                    report.blobs += 1;
                    report.bytes += n;
                }
                Err(e) => report.failures.push(e),
            }
        }
        report
    }

    /// GET with the image's token; on a 401, a token from the challenge's
    /// realm and once more.
    fn get(
        &self,
        client: &mut Client,
        target: &str,
        accept: Option<&str>,
        token: &Mutex<Option<String>>,
        object: &str,
    ) -> Result<Head, WarmError> {
        let mut renewed = false;
        loop {
            let bearer = token
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|t| format!("Bearer {t}"));
            let mut headers = Vec::with_capacity(2);
            if let Some(a) = accept {
                headers.push(("Accept", a));
            }
            if let Some(b) = &bearer {
                headers.push(("Authorization", b.as_str()));
            }
            let head = client
                .get(target, &headers)
                .map_err(|source| WarmError::Io {
                    object: object.to_string(),
                    source,
                })?;
            if head.status != 401 || renewed {
                return Ok(head);
            }
            let challenge = head.header("www-authenticate").map(<[u8]>::to_vec);
            client.skip(&head);
            let fresh = self.token(challenge.as_deref())?;
            *token.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
            renewed = true;
        }
    }

    /// A token from the realm of the mirror's challenge: anonymous, as
    /// docker asks (which is how the mirror learns what is public), or with
    /// `--user` when the realm is the mirror's own.
    fn token(&self, challenge: Option<&[u8]>) -> Result<String, WarmError> {
        let fail = |realm: &str, reason: String| WarmError::Token {
            realm: realm.to_string(),
            reason,
        };
        let ch = challenge
            .and_then(parse_challenge)
            .ok_or_else(|| fail("-", "the mirror answered 401 without a challenge".into()))?;
        let (realm, service) = bearer_realm(&ch).ok_or_else(|| {
            fail(
                "-",
                "the mirror's challenge is not Bearer with a realm URL".into(),
            )
        })?;
        let shown = realm.to_string();
        let mut target = realm.path_and_query.clone();
        let mut sep = if target.contains('?') { '&' } else { '?' };
        for (key, value) in [
            ("service", service.as_deref()),
            ("scope", ch.param("scope")),
        ] {
            if let Some(v) = value {
                target.push(sep);
                target.push_str(key);
                target.push('=');
                percent_encode(v, &mut target);
                sep = '&';
            }
        }
        // Credentials are for the mirror's own token endpoint: a realm
        // elsewhere is not sent them.
        let basic = self
            .basic
            .as_deref()
            .filter(|_| realm.origin == self.origin);
        let headers: Vec<(&str, &str)> = basic.map(|b| ("Authorization", b)).into_iter().collect();
        let mut client = Client::new(realm.origin.clone(), self.tls.clone());
        let head = client
            .get(&target, &headers)
            .map_err(|e| fail(&shown, e.to_string()))?;
        let body = client
            .small_body(&head, MAX_SMALL_BODY)
            .map_err(|e| fail(&shown, e.to_string()))?;
        if head.status != 200 {
            let detail = error_detail(&body);
            return Err(fail(&shown, format!("answered {} {detail}", head.status)));
        }
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| fail(&shown, format!("not a token answer: {e}")))?;
        a.token
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(&shown, "no token in the answer".into()))
    }

    /// A manifest's content type and bytes, checked against its digest: the
    /// reference's, or for a tag the `Docker-Content-Digest` the mirror
    /// sent.
    fn manifest(
        &self,
        client: &mut Client,
        img: &ImageRef,
        reference: &str,
        token: &Mutex<Option<String>>,
    ) -> Result<(Option<String>, Vec<u8>), WarmError> {
        let object = format!("manifest {reference}");
        let head = self.get(
            client,
            &img.path("manifests", reference),
            Some(FULL_ACCEPT),
            token,
            &object,
        )?;
        let io = |source| WarmError::Io {
            object: object.clone(),
            source,
        };
        if head.status != 200 {
            let body = client.small_body(&head, MAX_SMALL_BODY).map_err(io)?;
            return Err(WarmError::Status {
                object,
                status: head.status,
                detail: error_detail(&body),
            });
        }
        if let Framing::Length(n) = head.framing {
            if n > MAX_MANIFEST as u64 {
                client.skip(&head);
                return Err(WarmError::Manifest {
                    object,
                    reason: format!("{n} bytes, more than the {MAX_MANIFEST} a manifest may have"),
                });
            }
        }
        let mut bytes = Vec::new();
        let whole = client
            .body(&head, &mut |d| {
                bytes.extend_from_slice(d);
                bytes.len() <= MAX_MANIFEST
            })
            .map_err(io)?;
        if !whole {
            return Err(WarmError::Manifest {
                object,
                reason: format!("more than the {MAX_MANIFEST} bytes a manifest may have"),
            });
        }
        let named = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            head.header_str("docker-content-digest").map(str::to_string)
        };
        // A tag answered without a digest header is named by its own bytes:
        // there is nothing to check it against.
        let digest = named.unwrap_or_else(|| sha256_digest(&bytes));
        let mut v = verifier(&digest, &object)?;
        v.update(&bytes);
        if !v.matches() {
            return Err(WarmError::Mismatch {
                object,
                what: format!("the bytes do not match {digest}"),
            });
        }
        Ok((head.header_str("content-type").map(str::to_string), bytes))
    }

    /// The blobs, up to [`PARALLEL`] at a time (each thread its own
    /// connection), results in the order given.
    fn blobs(
        &self,
        client: &mut Client,
        img: &ImageRef,
        blobs: &[Blob],
        token: &Mutex<Option<String>>,
    ) -> Vec<Result<u64, WarmError>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<u64, WarmError>>>> =
            Mutex::new((0..blobs.len()).map(|_| None).collect());
        let work = |c: &mut Client| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(b) = blobs.get(i) else { break };
            let r = self.blob(c, img, b, token);
            results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(r);
        };
        std::thread::scope(|s| {
            for _ in 1..PARALLEL.min(blobs.len()) {
                s.spawn(|| work(&mut self.client()));
            }
            work(client);
        });
        results
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .flatten()
            .collect()
    }

    /// One blob, streamed into its digest check; the bytes it had.
    fn blob(
        &self,
        client: &mut Client,
        img: &ImageRef,
        blob: &Blob,
        token: &Mutex<Option<String>>,
    ) -> Result<u64, WarmError> {
        let object = format!("blob {}", blob.digest);
        let mut v = verifier(&blob.digest, &object)?;
        let head = self.get(
            client,
            &img.path("blobs", &blob.digest),
            None,
            token,
            &object,
        )?;
        let io = |source| WarmError::Io {
            object: object.clone(),
            source,
        };
        if head.status != 200 {
            let body = client.small_body(&head, MAX_SMALL_BODY).map_err(io)?;
            return Err(WarmError::Status {
                object,
                status: head.status,
                detail: error_detail(&body),
            });
        }
        let mut n = 0u64;
        client
            .body(&head, &mut |d| {
                v.update(d);
                n += d.len() as u64;
                true
            })
            .map_err(io)?;
        let mismatch = |what| WarmError::Mismatch {
            object: object.clone(),
            what,
        };
        if let Some(size) = blob.size.filter(|&s| s != n) {
            return Err(mismatch(format!("{n} bytes, the manifest says {size}")));
        }
        if !v.matches() {
            return Err(mismatch(format!("the bytes do not match {}", blob.digest)));
        }
        Ok(n)
    }
}

/// A digest check for `digest`; an error for algorithms that cannot be
/// checked (a warm that cannot vouch for what it fetched is not reported as
/// done).
fn verifier(digest: &str, object: &str) -> Result<Verifier, WarmError> {
    Digest::parse(digest)
        .ok()
        .and_then(|d| Verifier::new(&d))
        .ok_or_else(|| WarmError::Mismatch {
            object: object.to_string(),
            what: format!("cannot check {digest:?} (only sha256 and sha512 digests)"),
        })
}

/// `Basic base64(user:password)`.
fn basic_auth(user_pass: &str) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for chunk in user_pass.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(image: &str) -> (Option<String>, String, String, String) {
        let r = ImageRef::parse(image).unwrap_or_else(|e| panic!("{image}: {e}"));
        let path = r.path("manifests", &r.reference);
        (
            r.registry.clone(),
            r.repo.clone(),
            r.reference.clone(),
            path,
        )
    }

    #[test]
    fn references_are_read_as_docker_reads_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let hub = |repo: &str, r: &str| {
            (
                None,
                repo.to_string(),
                r.to_string(),
                format!("/v2/{repo}/manifests/{r}"),
            )
        };
        assert_eq!(parsed("alpine"), hub("library/alpine", "latest"));
        assert_eq!(parsed("alpine:3.19"), hub("library/alpine", "3.19"));
        assert_eq!(parsed("library/alpine"), hub("library/alpine", "latest"));
        assert_eq!(parsed("owner/img:v1"), hub("owner/img", "v1"));
        assert_eq!(
            parsed(&format!("alpine:3.19@{d}")),
            hub("library/alpine", &d)
        );
        assert_eq!(
            parsed("ghcr.io/owner/img:tag"),
            (
                Some("ghcr.io".into()),
                "owner/img".into(),
                "tag".into(),
                "/v2/ghcr.io/owner/img/manifests/tag".into()
            )
        );
        assert_eq!(
            parsed(&format!("quay.io/x/y@{d}")).3,
            format!("/v2/quay.io/x/y/manifests/{d}")
        );
        assert_eq!(
            parsed("docker.io/alpine").3,
            "/v2/docker.io/library/alpine/manifests/latest"
        );
        assert_eq!(
            parsed("index.docker.io/alpine").3,
            "/v2/docker.io/library/alpine/manifests/latest"
        );
        assert_eq!(
            parsed("localhost/img").3,
            "/v2/localhost/img/manifests/latest"
        );
        // A port cannot be part of a repository name: containerd's `ns`.
        assert_eq!(
            parsed("localhost:5000/img:1").3,
            "/v2/img/manifests/1?ns=localhost%3A5000"
        );
        assert_eq!(
            ImageRef::parse("ghcr.io/owner/img:tag")
                .unwrap()
                .to_string(),
            "ghcr.io/owner/img:tag"
        );
        assert_eq!(
            ImageRef::parse("alpine").unwrap().to_string(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            ImageRef::parse(&format!("x/y@{d}")).unwrap().to_string(),
            format!("docker.io/x/y@{d}")
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (image, why) in [
            ("Alpine", "repository name"),
            ("alpine:", "tag"),
            ("alpine:a+b", "tag"),
            ("alpine@sha256:123", "digest"),
            ("", "repository name"),
            ("ghcr.io/", "repository name"),
            ("bad_host.io:99999/x", "registry host"),
        ] {
            let e = ImageRef::parse(image).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(&format!("{image:?}")),
                "{image}: {e}"
            );
        }
    }

    #[test]
    fn the_default_mirror_is_the_first_listen_address_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let url = |l: &[SocketAddr]| default_mirror(l).map(|u| u.origin.to_string());
        assert_eq!(
            url(&[a("0.0.0.0:5000"), a("10.0.0.1:6000")]).unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(url(&[a("[::]:5000")]).unwrap(), "http://[::1]:5000");
        assert_eq!(url(&[a("10.1.2.3:80")]).unwrap(), "http://10.1.2.3");
        assert!(url(&[a("127.0.0.1:0")])
            .unwrap_err()
            .to_string()
            .contains("--mirror"));
        assert!(url(&[]).unwrap_err().to_string().contains("--mirror"));
        assert!(parse_mirror("http://h:1/v2/").is_err());
        assert!(parse_mirror("ftp://h:1").is_err());
    }

    #[test]
    fn indexes_lead_to_manifests_and_images_to_config_then_layers() {
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1}]}"#;
        assert!(matches!(walk(None, index), Ok(Walk::Index(d)) if d.len() == 1));
        let image = br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:c","size":2},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:f","urls":["https://x"]},
                      {"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:l","size":3}]}"#;
        let Ok(Walk::Image(d)) = walk(None, image) else {
            panic!("an image")
        };
        let names: Vec<_> = d.iter().map(|d| (d.digest.as_str(), d.foreign())).collect();
        assert_eq!(
            names,
            [("sha256:c", false), ("sha256:f", true), ("sha256:l", false)]
        );
        assert!(walk(None, br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(walk(None, b"not json").is_err());
    }

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
        assert_eq!((head.status, head.framing), (200, Framing::Chunked));
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
        assert_eq!((head.status, head.framing), (404, Framing::Length(5)));
        assert_eq!(c.small_body(&head, 3).unwrap(), b"nop");
    }

    #[test]
    fn sizes_and_credentials_are_written_as_people_and_servers_expect() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(12_900_000), "12.3 MiB");
        assert_eq!(
            basic_auth("alice:wonderland"),
            "Basic YWxpY2U6d29uZGVybGFuZA=="
        );
        assert_eq!(basic_auth("ab"), "Basic YWI=");
        assert_eq!(basic_auth("abc"), "Basic YWJj");
    }
}
