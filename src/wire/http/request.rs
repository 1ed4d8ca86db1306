//! Request heads: parse a head (whose end [`super::HeadScanner`] found) with
//! httparse into a [`RequestHead`] that borrows the connection's read
//! buffer, check its Host and request target (RFC 9112 3.2), and decide the
//! body framing (rejecting the ambiguous framings that enable smuggling).

use std::mem::MaybeUninit;

use super::host::HostPort;
use super::{has_token, name_eq, parse_content_length};
use crate::wire::method::Method;

/// Most header lines accepted in one request; more is answered with 431.
pub const MAX_HEADERS: usize = 96;

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Too many header lines (431).
    TooManyHeaders,
    /// Not HTTP/1.x, or broken syntax (400).
    Malformed(&'static str),
    /// Conflicting or unsupported body framing (400).
    BadFraming(&'static str),
    /// No Host, several, an invalid one, or one the target contradicts (400).
    BadHost(&'static str),
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) | HeadError::BadFraming(_) | HeadError::BadHost(_) => 400,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::TooManyHeaders => "too many request header fields",
            HeadError::Malformed(m) | HeadError::BadFraming(m) | HeadError::BadHost(m) => m,
        }
    }
}

/// A parsed request head. Every slice borrows the read buffer.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The method, parsed once.
    pub method: Method,
    /// The method as sent (for the log, where `method` is `Other`).
    pub method_text: &'a str,
    /// The target in origin form (`/v2/...`), or `*`: an absolute-form
    /// target arrives here as its path.
    pub target: &'a str,
    /// The Host header, checked (see [`HostPort`]); `None` only in HTTP/1.0.
    pub host: Option<&'a str>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'a [httparse::Header<'a>],
    /// Length of the head including the blank line.
    pub head_len: usize,
    pub body: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl<'a> RequestHead<'a> {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| name_eq(h.name, name))
            .map(|h| h.value)
    }

    /// All values of header `name`, in order.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| name_eq(h.name, name))
            .map(|h| h.value)
    }

    /// The Host header, checked when the head was parsed: a plain
    /// `host[:port]` (see [`HostPort`]); `None` only in HTTP/1.0.
    pub fn host(&self) -> Option<&'a str> {
        self.host
    }
}

/// Parses a complete head: `buf` is exactly the head that
/// [`super::HeadScanner`] found.
pub fn parse_request<'a>(
    buf: &'a [u8],
    storage: &'a mut [httparse::Header<'a>],
) -> Result<RequestHead<'a>, HeadError> {
    let mut req = httparse::Request::new(storage);
    let parsed = req.parse(buf);
    finish(req, parsed, buf.len())
}

/// [`parse_request`] with header slots that need no initialising first
/// (the hot path: 96 empty headers cost more to write than a head to parse).
pub fn parse_request_uninit<'a>(
    buf: &'a [u8],
    storage: &'a mut [MaybeUninit<httparse::Header<'a>>],
) -> Result<RequestHead<'a>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, storage);
    finish(req, parsed, buf.len())
}

fn finish<'a>(
    req: httparse::Request<'a, 'a>,
    parsed: httparse::Result<usize>,
    scanned_len: usize,
) -> Result<RequestHead<'a>, HeadError> {
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Malformed("incomplete request head"))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    // One framing rule: the parser must end the head where the scanner did
    // (with CRLF-only lines they agree; this keeps it so).
    if head_len != scanned_len {
        return Err(HeadError::Malformed("malformed request head"));
    }
    let method = req.method.ok_or(HeadError::Malformed("missing method"))?;
    let target = req
        .path
        .ok_or(HeadError::Malformed("missing request target"))?;
    let minor = req.version.ok_or(HeadError::Malformed("missing version"))?;
    let headers: &'a [httparse::Header<'a>] = req.headers;
    let host = check_host(headers, minor)?;
    let target = origin_form(target, method, host)?;

    let mut body = BodyFraming::None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = minor == 1;
    let mut expect_continue = false;
    for h in headers {
        if name_eq(h.name, "content-length") {
            let n = parse_content_length(h.value)
                .ok_or(HeadError::BadFraming("invalid Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(HeadError::BadFraming("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name_eq(h.name, "transfer-encoding") {
            // Only plain `chunked` is accepted: any other coding (or a stack of
            // them) is a smuggling risk and nothing a registry client sends.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(HeadError::BadFraming("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name_eq(h.name, "connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        } else if name_eq(h.name, "expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if chunked {
        if length.is_some() {
            return Err(HeadError::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if minor == 0 {
            return Err(HeadError::BadFraming("chunked body in an HTTP/1.0 request"));
        }
        body = BodyFraming::Chunked;
    } else if let Some(n) = length {
        if n > 0 {
            body = BodyFraming::Length(n);
        }
    }
    Ok(RequestHead {
        method: Method::parse(method),
        method_text: method,
        target,
        host,
        minor,
        headers,
        head_len,
        body,
        keep_alive,
        expect_continue,
    })
}

/// The Host header (RFC 9112 3.2): exactly one in HTTP/1.1, at most one in
/// HTTP/1.0, and a plain `host[:port]`. A request with two could be read
/// with either by whoever is in front of or behind us.
fn check_host<'a>(
    headers: &'a [httparse::Header<'a>],
    minor: u8,
) -> Result<Option<&'a str>, HeadError> {
    let mut hosts = headers.iter().filter(|h| name_eq(h.name, "host"));
    let value = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HeadError::BadHost("more than one Host header")),
        (None, _) if minor == 1 => {
            return Err(HeadError::BadHost("HTTP/1.1 request without a Host header"))
        }
        (None, _) => return Ok(None),
        (Some(h), None) => h.value,
    };
    std::str::from_utf8(value.trim_ascii())
        .ok()
        .filter(|v| HostPort::parse(v).is_some())
        .map(Some)
        .ok_or(HeadError::BadHost("invalid Host header"))
}

/// The request target in origin form. An absolute-form target (RFC 9112
/// 3.2.2) is taken when its authority is the Host header's (the host is
/// then the same whichever one a hop reads); otherwise, and for the
/// authority form (CONNECT: this is no tunnel) or `*` outside OPTIONS, 400.
fn origin_form<'a>(
    target: &'a str,
    method: &str,
    host: Option<&str>,
) -> Result<&'a str, HeadError> {
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok(target);
    }
    let scheme_len = ["http://", "https://"].iter().find_map(|s| {
        let t = target.get(..s.len())?;
        t.eq_ignore_ascii_case(s).then_some(s.len())
    });
    let Some(scheme_len) = scheme_len else {
        return Err(HeadError::Malformed(
            "request target must be in origin form",
        ));
    };
    let rest = &target[scheme_len..];
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if HostPort::parse(authority).is_none() {
        return Err(HeadError::BadHost("invalid host in the request target"));
    }
    if !host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return Err(HeadError::BadHost(
            "the request target names another host than the Host header",
        ));
    }
    match path {
        "" => Ok("/"),
        p if p.starts_with('/') => Ok(p),
        _ => Err(HeadError::Malformed("request target has no path")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<(BodyFraming, bool, usize), HeadError> {
        let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_request(raw, &mut st)?;
        Ok((h.body, h.keep_alive, h.head_len))
    }

    #[test]
    fn keep_alive_defaults_follow_the_version() {
        let keep = |raw: &[u8]| parse(raw).unwrap().1;
        assert!(keep(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn body_framing_is_unambiguous_or_refused() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .0,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .0,
            BodyFraming::Chunked
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: -5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::BadFraming(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn garbage_is_malformed_and_header_floods_are_431() {
        assert!(matches!(
            parse(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut flood = b"GET / HTTP/1.1\r\nHost: m\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            flood.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        flood.extend_from_slice(b"\r\n");
        assert_eq!(parse(&flood).unwrap_err().status(), 431);
    }

    #[test]
    fn uninit_slots_parse_like_initialised_ones() {
        let raw = b"GET /v2/ HTTP/1.1\r\nHost: m\r\nContent-Length: 3\r\n\r\nabc";
        let mut st = [MaybeUninit::uninit(); MAX_HEADERS];
        let h = parse_request_uninit(&raw[..49], &mut st).unwrap();
        assert_eq!((h.method, h.target, h.head_len), (Method::Get, "/v2/", 49));
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.body, BodyFraming::Length(3));
        assert_eq!(
            parse(&raw[..49]).unwrap(),
            (h.body, h.keep_alive, h.head_len)
        );
    }

    #[test]
    fn host_must_be_one_plain_host_in_http_1_1() {
        let host = |raw: &[u8]| {
            let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_request(raw, &mut st).map(|h| h.host().map(str::to_string))
        };
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: mirror.example.com:5000\r\n\r\n"),
            Ok(Some("mirror.example.com:5000".to_string()))
        );
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), Ok(None));
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: evil\"/x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ] {
            assert!(
                matches!(host(bad), Err(HeadError::BadHost(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn absolute_targets_must_agree_with_host_and_become_paths() {
        let target = |raw: &[u8]| {
            let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_request(raw, &mut st).map(|h| h.target.to_string())
        };
        assert_eq!(
            target(b"GET HTTP://M:5000/v2/?x HTTP/1.1\r\nHost: m:5000\r\n\r\n").as_deref(),
            Ok("/v2/?x")
        );
        assert_eq!(
            target(b"GET http://m HTTP/1.1\r\nHost: m\r\n\r\n").as_deref(),
            Ok("/")
        );
        assert_eq!(
            target(b"OPTIONS * HTTP/1.1\r\nHost: m\r\n\r\n").as_deref(),
            Ok("*")
        );
        for bad in [
            &b"GET http://other/v2/ HTTP/1.1\r\nHost: m\r\n\r\n"[..],
            b"GET http://u@m/v2/ HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET http://m/v2/ HTTP/1.0\r\n\r\n",
            b"CONNECT m:443 HTTP/1.1\r\nHost: m:443\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET ftp://m/ HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET http://m?x HTTP/1.1\r\nHost: m\r\n\r\n",
        ] {
            assert!(target(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_parse_that_ends_elsewhere_than_the_scanner_is_refused() {
        // The scanner never hands over such a slice; the parse still checks.
        let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: m\r\n\r\nGET", &mut st);
        assert!(matches!(r, Err(HeadError::Malformed(_))));
    }
}
