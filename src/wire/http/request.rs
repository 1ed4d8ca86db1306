//! Request heads: find the end of the head, parse it with httparse into a
//! [`RequestHead`] that borrows the connection's read buffer, and decide the
//! body framing (rejecting the ambiguous framings that enable smuggling).

use std::mem::MaybeUninit;
use std::sync::LazyLock;

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
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) | HeadError::BadFraming(_) => 400,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::TooManyHeaders => "too many request header fields",
            HeadError::Malformed(m) | HeadError::BadFraming(m) => m,
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
    pub target: &'a str,
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

    /// The Host header as text, if present and printable.
    pub fn host(&self) -> Option<&'a str> {
        let h = self.header("host")?;
        let s = std::str::from_utf8(h).ok()?.trim();
        (!s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b)))
        .then_some(s)
    }
}

/// Finds the end of a request head (`\r\n\r\n`) in `buf`, starting the scan
/// at `from` (bytes before it were already scanned). Returns the head length.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Built once: building a searcher costs more than scanning a small head.
    static HEAD_END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    let start = from.saturating_sub(3);
    HEAD_END.find(&buf[start..]).map(|i| start + i + 4)
}

/// Parses a complete head (`buf` must contain it; see [`find_head_end`]).
pub fn parse_request<'a>(
    buf: &'a [u8],
    storage: &'a mut [httparse::Header<'a>],
) -> Result<RequestHead<'a>, HeadError> {
    let mut req = httparse::Request::new(storage);
    let parsed = req.parse(buf);
    finish(req, parsed)
}

/// [`parse_request`] with header slots that need no initialising first
/// (the hot path: 96 empty headers cost more to write than a head to parse).
pub fn parse_request_uninit<'a>(
    buf: &'a [u8],
    storage: &'a mut [MaybeUninit<httparse::Header<'a>>],
) -> Result<RequestHead<'a>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, storage);
    finish(req, parsed)
}

fn finish<'a>(
    req: httparse::Request<'a, 'a>,
    parsed: httparse::Result<usize>,
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
    let method = req.method.ok_or(HeadError::Malformed("missing method"))?;
    let target = req
        .path
        .ok_or(HeadError::Malformed("missing request target"))?;
    let minor = req.version.ok_or(HeadError::Malformed("missing version"))?;
    let headers: &'a [httparse::Header<'a>] = req.headers;
    if !target.starts_with('/') && target != "*" {
        return Err(HeadError::Malformed(
            "request target must be in origin form",
        ));
    }

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
        minor,
        headers,
        head_len,
        body,
        keep_alive,
        expect_continue,
    })
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
    fn head_end_is_found_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        assert_eq!(find_head_end(buf, 0), Some(27));
        assert_eq!(find_head_end(buf, 25), Some(27));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    #[test]
    fn keep_alive_defaults_follow_the_version() {
        let keep = |raw: &[u8]| parse(raw).unwrap().1;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn body_framing_is_unambiguous_or_refused() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .0,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .0,
            BodyFraming::Chunked
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
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
        let mut flood = b"GET / HTTP/1.1\r\n".to_vec();
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
        let h = parse_request_uninit(raw, &mut st).unwrap();
        assert_eq!((h.method, h.target, h.head_len), (Method::Get, "/v2/", 49));
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.body, BodyFraming::Length(3));
        assert_eq!(parse(raw).unwrap(), (h.body, h.keep_alive, h.head_len));
    }

    #[test]
    fn host_header_is_exposed_only_when_sane() {
        let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_request(
            b"GET / HTTP/1.1\r\nHost: mirror.example.com:5000\r\n\r\n",
            &mut st,
        )
        .unwrap();
        assert_eq!(h.host(), Some("mirror.example.com:5000"));
        let mut st = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_request(b"GET / HTTP/1.1\r\nHost: evil\"/x\r\n\r\n", &mut st).unwrap();
        assert_eq!(h.host(), None);
    }
}
