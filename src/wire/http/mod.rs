//! HTTP/1.1 on borrowed bytes: request heads (httparse), body framing, the
//! chunked transfer coding, and helpers that write heads into a reusable
//! output buffer.

pub mod chunked;
pub mod framing;
pub mod head_end;
pub mod host;
pub mod request;
pub mod response;

pub use chunked::{ChunkedDecoder, ChunkedError};
pub use framing::{ClientFraming, RespFraming};
pub use head_end::{BareLf, HeadScanner};
pub use host::HostPort;
pub use request::{
    parse_request, parse_request_uninit, BodyFraming, HeadError, RequestHead, MAX_HEADERS,
};
pub use response::{reason, write_header, write_status};

/// Case-insensitive comparison of ASCII header names.
#[inline]
pub fn name_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a decimal Content-Length; rejects signs, spaces inside, overflow.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
