//! The request method, parsed once from the request line.

use std::fmt;

/// An HTTP method. Registry reads are GET and HEAD; POST reaches only the
/// token endpoint; the rest are refused (a read-only mirror), named so that
/// the refusal and the log can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other token (CONNECT, TRACE, extension methods).
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 section 9.1): `get` is `Other`.
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method's name on the wire (`Other` has none of its own: the
    /// request head keeps the text it came with).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    /// GET or HEAD: what a mirror serves.
    pub fn is_read(self) -> bool {
        matches!(self, Method::Get | Method::Head)
    }

    /// Safe to send again on a fresh connection when nothing came back.
    pub fn idempotent_read(self) -> bool {
        self.is_read()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive_and_round_trip() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(Method::parse(m).as_str(), m);
        }
        assert_eq!(Method::parse("get"), Method::Other);
        assert_eq!(Method::parse("CONNECT"), Method::Other);
        assert!(Method::Head.is_read() && !Method::Post.is_read());
    }
}
