//! Errors on the data path: [`UpstreamError`] (what the upstream module
//! reports) and [`Error`], the one error a request carries to its end: kind,
//! side and context, which decide the client's status, the retry and the
//! OCI error body (`wire::oci`).

use std::fmt;
use std::io;

pub use crate::wire::oci::{ErrorCode, ErrorReply};

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
    fn timeouts_become_504_and_other_failures_502() {
        let t = UpstreamError::Timeout {
            host: "h".into(),
            phase: "connect",
        };
        assert_eq!(Error::from(t).reply("docker.io").status, 504);
        let c = UpstreamError::Connect {
            host: "h".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let c = Error::from(c);
        assert_eq!(c.reply("docker.io").status, 502);
        assert!(!c.reply("docker.io").message.contains("h:"));
    }
}

/// Which end of a request an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
    Internal,
}

/// What went wrong on the data path, as far as the client's answer and a
/// retry are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not reach the upstream (resolve, connect, TLS).
    Unreachable,
    /// An operation ran out its deadline.
    TimedOut,
    /// The connection ended before the message did.
    Cut,
    /// The body does not match the digest that named it.
    DigestMismatch,
    /// Not HTTP/1.x, broken framing, too large.
    BadResponse,
    /// Redirects that cannot be followed.
    Redirect,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::TimedOut => "timeout",
            ErrorKind::Cut => "cut",
            ErrorKind::DigestMismatch => "digest",
            ErrorKind::BadResponse => "bad-response",
            ErrorKind::Redirect => "redirect",
        }
    }
}

/// One data-path error: what, on which side, and the context a person needs
/// (host, phase, cause). It knows the client's status and whether a retry on
/// a fresh connection is safe; it becomes a reply at one boundary.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub side: Side,
    /// For the operator's log: hosts, phases, causes.
    pub context: String,
    /// For the client, after "upstream registry <name>": never a host.
    public: String,
    retryable: bool,
}

impl Error {
    pub fn new(kind: ErrorKind, side: Side, context: impl Into<String>) -> Error {
        let public = match kind {
            ErrorKind::Unreachable => " unreachable",
            ErrorKind::TimedOut => " timed out (body)",
            ErrorKind::Cut => ": the response ended before it was complete",
            ErrorKind::DigestMismatch => " sent content that does not match the requested digest",
            ErrorKind::BadResponse => " sent a malformed response",
            ErrorKind::Redirect => ": redirect not followed",
        };
        Error {
            kind,
            side,
            context: context.into(),
            public: public.into(),
            retryable: false,
        }
    }

    /// The status a client gets when this error ends its request before a
    /// response head went out.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::TimedOut => 504,
            _ => 502,
        }
    }

    /// Safe to retry once on a new connection (nothing of the answer seen).
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The OCI error answer, naming the registry (never an upstream host:
    /// that is for the operator's log).
    pub fn reply(&self, registry: &str) -> ErrorReply {
        ErrorReply::new(
            self.status(),
            ErrorCode::Unavailable,
            format!("upstream registry {registry}{}", self.public),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.context)
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        let kind = match &e {
            UpstreamError::Resolve { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Tls { .. } => ErrorKind::Unreachable,
            UpstreamError::Timeout { .. } => ErrorKind::TimedOut,
            UpstreamError::Io { .. } => ErrorKind::Cut,
            UpstreamError::BadResponse { .. } => ErrorKind::BadResponse,
            UpstreamError::Redirect { .. } => ErrorKind::Redirect,
        };
        let public = match &e {
            UpstreamError::Timeout { phase, .. } => format!(" timed out ({phase})"),
            UpstreamError::Redirect { reason } => format!(": {reason}"),
            other => format!(" unreachable: {}", other.short()),
        };
        Error {
            kind,
            side: Side::Upstream,
            context: e.to_string(),
            public,
            retryable: e.retryable(),
        }
    }
}
