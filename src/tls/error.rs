//! [`TlsError`]: what can go wrong in a TLS stream, as a type. The stream's
//! I/O traits speak `io::Error`, so a `TlsError` travels inside one (with the
//! `io::ErrorKind` callers act on: `UnexpectedEof` for a cut, `ConnectionAborted`
//! for a peer's alert) and can be recovered with [`TlsError::of`].

use std::fmt;
use std::io;

use super::record::RecordError;

#[derive(Debug)]
pub enum TlsError {
    /// rustls refused the handshake or a key change.
    Rustls(rustls::Error),
    /// Encoding a handshake message failed.
    Encode(String),
    /// The connection ended during the handshake.
    HandshakeCut(&'static str),
    /// A post-handshake handshake message over the size we accept.
    MessageTooLarge,
    /// The peer negotiated a version the record layer does not speak.
    UnsupportedVersion(String),
    /// The traffic keys could not be installed.
    Keys(String),
    /// A record that does not parse, open or seal.
    Record(RecordError),
    /// The peer sent a fatal alert (its description code).
    Alert(u8),
    /// A record type that has no place after the handshake.
    UnexpectedRecord(u8),
    /// A handshake message that has no place after the handshake.
    UnexpectedHandshake(u8),
    /// Any other breach of the protocol by the peer.
    Protocol(&'static str),
    /// A TLS 1.2 key reached its usage limit (TLS 1.2 cannot rekey).
    KeyLimit,
    /// TCP ended without close_notify: the data may have been cut short.
    Truncated,
    /// A cancelled read or write took the stream's buffer or left a record
    /// half sent: the stream is unusable.
    UsedAfterCancel,
    /// An earlier error ended the stream (it only sends its alert at
    /// shutdown now).
    Failed,
    /// More key updates from the peer without data in between than we
    /// accept (see [`super::inbound::MAX_KEY_UPDATES`]).
    KeyUpdateFlood,
    /// The stream was used against its contract (a bug of the caller).
    Misuse(&'static str),
    /// The handshake negotiated `acme-tls/1`: a CA validated a domain
    /// (RFC 8737). The handshake was all it wanted; no data follows.
    AcmeValidation,
}

/// Alert descriptions we send (RFC 8446 §6.2).
pub mod alert {
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
}

impl TlsError {
    /// The fatal alert this error owes the peer, if any: none for what the
    /// peer ended itself (its alert, a TCP end) or for a stream whose send
    /// side is in an unknown state.
    pub fn alert(&self) -> Option<u8> {
        use RecordError::*;
        match self {
            TlsError::Record(BadRecordMac) => Some(alert::BAD_RECORD_MAC),
            TlsError::Record(RecordOverflow(_)) => Some(alert::RECORD_OVERFLOW),
            TlsError::Record(Malformed(_)) | TlsError::MessageTooLarge => Some(alert::DECODE_ERROR),
            TlsError::Protocol(_)
            | TlsError::UnexpectedRecord(_)
            | TlsError::UnexpectedHandshake(_)
            | TlsError::KeyUpdateFlood => Some(alert::UNEXPECTED_MESSAGE),
            TlsError::Rustls(_) | TlsError::Keys(_) | TlsError::Misuse(_) => {
                Some(alert::INTERNAL_ERROR)
            }
            TlsError::Record(SequenceExhausted)
            | TlsError::Encode(_)
            | TlsError::HandshakeCut(_)
            | TlsError::UnsupportedVersion(_)
            | TlsError::Alert(_)
            | TlsError::KeyLimit
            | TlsError::Truncated
            | TlsError::UsedAfterCancel
            | TlsError::Failed
            | TlsError::AcmeValidation => None,
        }
    }

    /// The `TlsError` inside an `io::Error` from a TLS stream, if any.
    pub fn of(e: &io::Error) -> Option<&TlsError> {
        e.get_ref()?.downcast_ref()
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            TlsError::Truncated | TlsError::HandshakeCut(_) => io::ErrorKind::UnexpectedEof,
            TlsError::Alert(_) => io::ErrorKind::ConnectionAborted,
            TlsError::UsedAfterCancel | TlsError::Failed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Rustls(e) => write!(f, "{e}"),
            TlsError::Encode(e) => write!(f, "TLS encode: {e}"),
            TlsError::HandshakeCut(m) | TlsError::Protocol(m) | TlsError::Misuse(m) => {
                f.write_str(m)
            }
            TlsError::MessageTooLarge => f.write_str("TLS handshake message too large"),
            TlsError::UnsupportedVersion(v) => write!(f, "unsupported TLS version {v}"),
            TlsError::Keys(e) => write!(f, "TLS keys: {e}"),
            TlsError::Record(e) => write!(f, "{e}"),
            TlsError::Alert(d) => write!(f, "TLS peer sent alert {d}"),
            TlsError::UnexpectedRecord(t) => {
                write!(f, "unexpected TLS record type {t} after the handshake")
            }
            TlsError::UnexpectedHandshake(t) => {
                write!(
                    f,
                    "unexpected TLS handshake message {t} after the handshake"
                )
            }
            TlsError::KeyLimit => f.write_str("TLS 1.2 connection reached its key usage limit"),
            TlsError::Truncated => {
                f.write_str("TLS peer closed the connection without close_notify")
            }
            TlsError::UsedAfterCancel => {
                f.write_str("TLS stream used after a cancelled read or write")
            }
            TlsError::Failed => f.write_str("TLS stream used after an error ended it"),
            TlsError::KeyUpdateFlood => f.write_str("too many TLS key updates without data"),
            TlsError::AcmeValidation => f.write_str("an ACME TLS-ALPN-01 validation handshake"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

impl From<RecordError> for TlsError {
    fn from(e: RecordError) -> TlsError {
        TlsError::Record(e)
    }
}

/// `io::Error` from a rustls error (for `map_err`).
pub(super) fn rustls_err(e: rustls::Error) -> io::Error {
    TlsError::Rustls(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_the_trip_through_io_error() {
        let e: io::Error = TlsError::Truncated.into();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(matches!(TlsError::of(&e), Some(TlsError::Truncated)));
        let e: io::Error = TlsError::Alert(40).into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(e.to_string(), "TLS peer sent alert 40");
        assert!(TlsError::of(&io::Error::other("x")).is_none());
    }
}
