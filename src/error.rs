//! Errors: the OCI error codes ocirelay answers with, and the proxy's own
//! error type that says what went wrong upstream and how to tell the client.

use std::fmt;
use std::io;

/// The error codes of the OCI distribution spec (plus distribution's
/// `UNAVAILABLE`), written into `{"errors":[{"code":..}]}` bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    NameUnknown,
    ManifestUnknown,
    BlobUnknown,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// A complete error answer: status, code and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body `{"errors":[{"code":..,"message":..,"detail":null}]}`.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.message.len());
        b.extend_from_slice(b"{\"errors\":[{\"code\":\"");
        b.extend_from_slice(self.code.as_str().as_bytes());
        b.extend_from_slice(b"\",\"message\":");
        json_string(&mut b, &self.message);
        b.extend_from_slice(b",\"detail\":null}]}");
        b
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// What can go wrong between ocirelay and an upstream. The kind decides the
/// client's status (502 unreachable, 504 timed out) and whether a retry on a
/// fresh connection is allowed.
#[derive(Debug)]
pub enum UpstreamError {
    /// Name resolution failed or returned nothing.
    Resolve { host: String, source: io::Error },
    /// TCP connect failed on every address.
    Connect { host: String, source: io::Error },
    /// TLS handshake failed (bad certificate, protocol error).
    Tls { host: String, source: io::Error },
    /// An operation did not finish within its deadline.
    Timeout { host: String, phase: &'static str },
    /// The connection failed while sending the request or reading the head.
    /// `before_response` is true when not one response byte arrived, which
    /// makes a retry of an idempotent request on a fresh connection safe.
    Io {
        host: String,
        source: io::Error,
        before_response: bool,
    },
    /// The upstream answered with something that is not HTTP/1.x.
    BadResponse { host: String, reason: &'static str },
    /// Redirects went on for longer than allowed or pointed somewhere unusable.
    Redirect { reason: String },
}

impl UpstreamError {
    /// The answer a client gets when this error ends its request.
    pub fn reply(&self, registry: &str) -> ErrorReply {
        match self {
            UpstreamError::Timeout { phase, .. } => ErrorReply::new(
                504,
                ErrorCode::Unavailable,
                format!("upstream registry {registry} timed out ({phase})"),
            ),
            UpstreamError::Redirect { reason } => ErrorReply::new(
                502,
                ErrorCode::Unavailable,
                format!("upstream registry {registry}: {reason}"),
            ),
            other => ErrorReply::new(
                502,
                ErrorCode::Unavailable,
                format!(
                    "upstream registry {registry} unreachable: {}",
                    other.short()
                ),
            ),
        }
    }

    fn short(&self) -> String {
        match self {
            UpstreamError::Resolve { source, .. } => format!("name resolution failed: {source}"),
            UpstreamError::Connect { source, .. } => format!("connect failed: {source}"),
            UpstreamError::Tls { source, .. } => format!("TLS failed: {source}"),
            UpstreamError::Timeout { phase, .. } => format!("timed out ({phase})"),
            UpstreamError::Io { source, .. } => format!("connection failed: {source}"),
            UpstreamError::BadResponse { reason, .. } => format!("bad response: {reason}"),
            UpstreamError::Redirect { reason } => reason.clone(),
        }
    }

    /// Safe to retry once on a new connection (nothing of the answer was seen).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Io {
                before_response: true,
                ..
            }
        )
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self {
            UpstreamError::Resolve { host, .. }
            | UpstreamError::Connect { host, .. }
            | UpstreamError::Tls { host, .. }
            | UpstreamError::Timeout { host, .. }
            | UpstreamError::Io { host, .. }
            | UpstreamError::BadResponse { host, .. } => host.as_str(),
            UpstreamError::Redirect { .. } => "-",
        };
        write!(f, "{host}: {}", self.short())
    }
}

impl std::error::Error for UpstreamError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_the_oci_json_shape() {
        let r = ErrorReply::new(400, ErrorCode::NameInvalid, "bad \"name\"\n");
        assert_eq!(
            String::from_utf8(r.body()).unwrap(),
            r#"{"errors":[{"code":"NAME_INVALID","message":"bad \"name\"\n","detail":null}]}"#
        );
    }

    #[test]
    fn timeouts_become_504_and_other_failures_502() {
        let t = UpstreamError::Timeout {
            host: "h".into(),
            phase: "connect",
        };
        assert_eq!(t.reply("docker.io").status, 504);
        let c = UpstreamError::Connect {
            host: "h".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(c.reply("docker.io").status, 502);
        assert!(!c.reply("docker.io").message.contains("h:"));
    }
}
